//! The list of URLs: one per line, blank lines and `#` comments skipped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use crate::driver::lib::parse_url;
use crate::record::{CliRequest, Record};

/// One input line: a request, or the record of a line that is not a URL.
pub enum Line {
    Request(CliRequest),
    Invalid(Record),
}

/// Reads the list from a file, or stdin for `-`.
pub fn read_lines(path: &str) -> Result<Vec<Line>, String> {
    let reader: Box<dyn Read> = if path == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| format!("cannot read URL file {path}: {e}"))?)
    };
    let mut lines = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read URL file {path}: {e}"))?;
        let input = line.trim();
        if input.is_empty() || input.starts_with('#') {
            continue;
        }
        let number = index as u64 + 1;
        lines.push(match parse_url(input) {
            Ok(url) => Line::Request(CliRequest::new(number, input.to_string(), url)),
            Err(e) => Line::Invalid(Record::failed(
                number,
                input.to_string(),
                None,
                "invalid_url",
                e.to_string(),
            )),
        });
    }
    Ok(lines)
}
