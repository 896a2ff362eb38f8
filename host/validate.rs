//! Validation (todo)
