//! Bounds on untrusted workflow text, checked before any parser sees it.
//!
//! A YAML parser reads a whole document into events before deserialising it, and its cost
//! grows faster than the nesting: 100,000 opening brackets took 26 s. So every workflow text
//! (a file, an HTTP body) is first scanned once, in time linear in its length whatever it
//! holds, for its size and for how deep its collections nest; a text over a limit is refused
//! with the limit and the place it was exceeded, and never parsed.
//!
//! The scan over-counts rather than under-counts: brackets in plain scalars (`see [1]`) count
//! as nesting, balanced ones cancel out, and only quoted scalars, comments and block scalars
//! (`|`, `>`) are skipped, as a parser skips them.

use crdt_store::{BoundsError, MAX_DEFINITION_BYTES, MAX_DEFINITION_DEPTH, MAX_RUN_INPUT_BYTES};

/// Checks a YAML (or JSON, which is YAML) workflow text against the definition limits.
pub fn workflow_text(text: &str) -> Result<(), BoundsError> {
    yaml(text, MAX_DEFINITION_BYTES, MAX_DEFINITION_DEPTH)
}

/// Reads a run's input: empty text is no input; otherwise JSON within
/// [`MAX_RUN_INPUT_BYTES`] and the definition's nesting limit, checked before parsing.
pub fn run_input(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    crdt_store::check_json_bounds(text, MAX_RUN_INPUT_BYTES, MAX_DEFINITION_DEPTH)
        .map_err(|e| format!("the run input is refused: {e}"))?;
    serde_json::from_str(text).map_err(|e| format!("the run input is not JSON: {e}"))
}

/// Checks a YAML text's length, then how deep its block collections (by indentation and
/// `- `/`? ` indicators) and flow collections (`[`, `{`) nest, together.
pub fn yaml(text: &str, max_bytes: usize, max_depth: usize) -> Result<(), BoundsError> {
    if text.len() > max_bytes {
        return Err(BoundsError::TooLarge {
            bytes: text.len(),
            limit: max_bytes,
        });
    }
    let mut scan = Scan {
        max_depth,
        indents: Vec::new(),
        flow: 0,
        quote: None,
        block_scalar: None,
    };
    for (i, line) in text.split('\n').enumerate() {
        scan.line(line.strip_suffix('\r').unwrap_or(line), i + 1)?;
    }
    Ok(())
}

struct Scan {
    max_depth: usize,
    /// Columns of the block collections the current line may be inside of.
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar, which may span lines: its quote.
    quote: Option<char>,
    /// Inside a block scalar: the indentation its content lines exceed.
    block_scalar: Option<usize>,
}

impl Scan {
    fn too_deep(&self, line: usize, column: usize) -> BoundsError {
        BoundsError::TooDeep {
            limit: self.max_depth,
            line,
            column,
        }
    }

    fn depth(&self) -> usize {
        self.indents.len() + self.flow
    }

    fn line(&mut self, text: &str, number: usize) -> Result<(), BoundsError> {
        let chars: Vec<char> = text.chars().collect();
        let indent = chars.iter().take_while(|c| **c == ' ').count();
        let blank = indent == chars.len();
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let mut at = 0;
        if self.flow == 0 && self.quote.is_none() {
            if blank || chars[indent] == '#' {
                return Ok(());
            }
            if text.starts_with("---") || text.starts_with("...") {
                self.indents.clear();
            }
            while self.indents.last().is_some_and(|open| *open >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            at = indent;
            // `- - x` and `? x` open a collection per indicator on one line.
            while at < chars.len()
                && matches!(chars[at], '-' | '?')
                && chars.get(at + 1).is_none_or(|c| *c == ' ')
            {
                at += 1;
                while chars.get(at) == Some(&' ') {
                    at += 1;
                }
                self.indents.push(at);
                if self.depth() > self.max_depth {
                    return Err(self.too_deep(number, at.min(chars.len()) + 1));
                }
            }
            if self.depth() > self.max_depth {
                return Err(self.too_deep(number, indent + 1));
            }
        }
        // Whether the next character starts a scalar (after a line start, `: `, `- `, `,`, or
        // an opening bracket): only there does a quote open a quoted scalar, and `|` or `>`
        // a block scalar.
        let mut scalar_start = true;
        while at < chars.len() {
            let c = chars[at];
            at += 1;
            match self.quote {
                Some('"') => {
                    match c {
                        '\\' => at += 1,
                        '"' => self.quote = None,
                        _ => {}
                    }
                    continue;
                }
                Some(_) => {
                    if c == '\'' {
                        if chars.get(at) == Some(&'\'') {
                            at += 1;
                        } else {
                            self.quote = None;
                        }
                    }
                    continue;
                }
                None => {}
            }
            match c {
                ' ' | '\t' => continue,
                '#' if at == 1 || matches!(chars[at - 2], ' ' | '\t') => break,
                '"' | '\'' if scalar_start => self.quote = Some(c),
                '[' | '{' => {
                    self.flow += 1;
                    if self.depth() > self.max_depth {
                        return Err(self.too_deep(number, at));
                    }
                    scalar_start = true;
                    continue;
                }
                ']' | '}' => self.flow = self.flow.saturating_sub(1),
                ',' => {
                    scalar_start = true;
                    continue;
                }
                // Not `- ` or `? ` in the middle of a line: there they are part of a plain
                // scalar (`a - 'b`), and a quote after them opens nothing.
                ':' if chars.get(at).is_none_or(|n| *n == ' ') => {
                    scalar_start = true;
                    continue;
                }
                '|' | '>' if scalar_start && self.flow == 0 => {
                    let rest: String = chars[at..].iter().collect();
                    let header = rest.split(" #").next().unwrap_or_default();
                    if header
                        .trim()
                        .chars()
                        .all(|h| matches!(h, '+' | '-' | '1'..='9'))
                    {
                        // Its content is indented deeper than the node holding it.
                        self.block_scalar = Some(self.indents.last().copied().unwrap_or(0));
                        return Ok(());
                    }
                }
                _ => {}
            }
            scalar_start = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_input_is_json_within_its_bounds_or_refused_by_name() {
        assert_eq!(run_input(" \n"), Ok(serde_json::Value::Null));
        assert_eq!(
            run_input(r#"{"v": [1]}"#),
            Ok(serde_json::json!({"v": [1]}))
        );
        let large = format!("\"{}\"", "x".repeat(MAX_RUN_INPUT_BYTES));
        assert!(
            run_input(&large)
                .unwrap_err()
                .contains("exceed the limit of 262144")
        );
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert!(run_input(&deep).unwrap_err().contains("limit of 64 levels"));
        let deepest_allowed = "[".repeat(64) + &"]".repeat(64);
        assert!(run_input(&deepest_allowed).is_ok());
        assert!(run_input("{oops").unwrap_err().contains("not JSON"));
    }

    fn depth_error(text: &str, max_depth: usize) -> Option<(usize, usize)> {
        match yaml(text, usize::MAX, max_depth) {
            Ok(()) => None,
            Err(BoundsError::TooDeep { line, column, .. }) => Some((line, column)),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn ordinary_workflows_pass() {
        let example = include_str!("../../../docs/examples/sensor-zscore.yaml");
        assert_eq!(workflow_text(example), Ok(()));
        let digits = include_str!("../../../docs/examples/digits.yaml");
        assert_eq!(workflow_text(digits), Ok(()));
        // Brackets inside quotes, comments and block scalars are not nesting.
        let text = "a: \"[[[[\"\nb: '{{{{ it''s'\n# [[[[[\nc: |\n  [[[[[[\n  {{{{{\nd: [1, [2]]\n";
        assert_eq!(depth_error(text, 3), None);
    }

    #[test]
    fn each_kind_of_nesting_counts() {
        // Block mappings by indentation.
        assert_eq!(depth_error("a:\n b:\n  c: 1\n", 3), None);
        assert_eq!(depth_error("a:\n b:\n  c:\n   d: 1\n", 3), Some((4, 4)));
        // Sequences on one line; what follows the last indicator counts as a level too, as
        // it may be a mapping.
        assert_eq!(depth_error("- - x\n", 3), None);
        assert_eq!(depth_error("- - - x\n", 3), Some((1, 7)));
        // Flow collections, inside block ones.
        assert_eq!(depth_error("a: [[1]]\n", 3), None);
        assert_eq!(depth_error("a: [[[1]]]\n", 3), Some((1, 6)));
        // Across lines.
        assert_eq!(depth_error("a: [\n  [\n   [\n", 3), Some((3, 4)));
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_at_once() {
        let n = 100_000;
        let cases = [
            ("flow", "[".repeat(n)),
            ("flow mappings", "{a: ".repeat(n)),
            ("block sequences", "- ".repeat(n) + "x"),
            // As deep as 1 MiB of indentation goes.
            (
                "indentation",
                (0..1400)
                    .map(|i| format!("{}k:\n", " ".repeat(i)))
                    .collect(),
            ),
            (
                "nested sequences",
                (0..1400).map(|i| format!("{}-\n", " ".repeat(i))).collect(),
            ),
        ];
        for (what, text) in cases {
            let text = &text[..text.len().min(MAX_DEFINITION_BYTES)];
            let started = std::time::Instant::now();
            let err = workflow_text(text).unwrap_err();
            assert!(
                started.elapsed() < std::time::Duration::from_millis(200),
                "{what}: {:?}",
                started.elapsed()
            );
            assert!(
                err.to_string().contains("limit of 64 levels at line"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn size_is_checked_first() {
        let text = "x".repeat(MAX_DEFINITION_BYTES + 1);
        assert_eq!(
            workflow_text(&text).unwrap_err().to_string(),
            "1048577 bytes exceed the limit of 1048576 bytes"
        );
    }
}
