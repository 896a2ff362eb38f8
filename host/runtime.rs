//! Runtime (todo)
