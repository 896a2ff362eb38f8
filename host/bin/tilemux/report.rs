//! Result tables: printed as markdown, written as CSV and markdown next to the command that made
//! them.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

/// A table of strings with a header row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| {} |", self.header.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(self.header.len()));
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }

    /// Prints the table and, with `out`, writes `<stem>.csv` and `<stem>.md` (with `preamble` and
    /// the command line) there.
    pub fn finish(&self, preamble: &str, out: Option<&Path>, stem: &str) -> Result<()> {
        println!("\n{preamble}\n{}", self.markdown());
        if let Some(dir) = out {
            std::fs::create_dir_all(dir)?;
            let mut w = csv::Writer::from_path(dir.join(format!("{stem}.csv")))?;
            w.write_record(&self.header)?;
            for r in &self.rows {
                w.write_record(r)?;
            }
            w.flush()?;
            let cmd: Vec<String> = std::env::args().collect();
            std::fs::write(
                dir.join(format!("{stem}.md")),
                format!("Command: `{}`\n\n{preamble}\n{}", cmd.join(" "), self.markdown()),
            )?;
        }
        Ok(())
    }
}
