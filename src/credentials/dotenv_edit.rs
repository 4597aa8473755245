//! Reading the `.env` file the way dotenvy does, and changing one key in it while keeping every
//! other byte (comments, blank lines, order, CRLF) as it was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a `.env` cannot be taken, or cannot take a change. Names the file, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{} is not UTF-8 text: save it as UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error(
        "{} line {}: {error}; dotenvy and docker compose cannot read it: fix or quote that line",
        path.display(),
        error.line()
    )]
    Syntax {
        path: PathBuf,
        #[source]
        error: SyntaxError,
    },
    /// See [`set_checked`].
    #[error(
        "{}: {key} cannot be rewritten without changing other values (is its value quoted over \
         several lines, or does another value refer to it?): put {key}='...' on a line of its own",
        path.display()
    )]
    Unrewritable { path: PathBuf, key: String },
}

/// The first line dotenvy refuses, and why.
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    /// dotenvy choked on a fragment of line `number` (1-based; shown whole, trimmed, as `text`),
    /// at character `index` of its value.
    #[error("cannot parse '{text}' (at character {index} of the value)")]
    Line { number: usize, text: String, index: usize },
    /// Another of dotenvy's errors: it names no line.
    #[error(transparent)]
    Other(dotenvy::Error),
}

impl SyntaxError {
    /// The line's number, 0 when dotenvy named none.
    pub fn line(&self) -> usize {
        match self {
            SyntaxError::Line { number, .. } => *number,
            SyntaxError::Other(_) => 0,
        }
    }
}

/// A parsed `.env`: its text and its values (a key set twice: the last one wins, as in compose).
#[derive(Debug, Clone)]
pub struct EnvFile {
    pub text: String,
    pub values: HashMap<String, String>,
}

impl EnvFile {
    /// The file's bytes (read by the caller, see `fsutil::read_bounded`) as dotenvy reads them.
    /// Err names the file and, for a syntax error, the line.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<EnvFile, EnvError> {
        let text = std::str::from_utf8(bytes).map_err(|_| EnvError::NotUtf8(path.to_path_buf()))?.to_string();
        let values = parse(&text).map_err(|error| EnvError::Syntax { path: path.to_path_buf(), error })?;
        Ok(EnvFile { text, values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value as written after `=` on the key's last line, before any unquoting: tells a
    /// value mangled by `$` expansion from one written that way.
    pub fn raw(&self, key: &str) -> Option<&str> {
        let line = self.text.split_inclusive('\n').rfind(|l| assigns(l, key))?;
        Some(line[line.find('=')? + 1..].trim_end_matches(['\n', '\r']).trim())
    }
}

/// Values by key, or the first line dotenvy refuses.
pub fn parse(text: &str) -> Result<HashMap<String, String>, SyntaxError> {
    let mut values = HashMap::new();
    for item in dotenvy::Iter::new(text.as_bytes()) {
        match item {
            Ok((k, v)) => {
                values.insert(k, v);
            }
            Err(dotenvy::Error::LineParse(fragment, index)) => {
                // dotenvy names the fragment it choked on, not the line: find the line holding it.
                let fragment = fragment.trim();
                let (number, line) =
                    text.lines().enumerate().find(|(_, l)| l.contains(fragment)).unwrap_or((0, fragment));
                return Err(SyntaxError::Line { number: number + 1, text: line.trim().to_string(), index });
            }
            Err(e) => return Err(SyntaxError::Other(e)),
        }
    }
    Ok(values)
}

/// [`set`], proven: the new text must parse, give `key` exactly `value` and every other key its
/// old value. A `.env` where the key's line is not a whole assignment (a quoted value spread over
/// several lines, a line that only looks like one inside another value) is refused rather than
/// damaged.
pub fn set_checked(path: &Path, text: &str, key: &str, value: &str) -> Result<String, EnvError> {
    let new = set(text, key, value);
    let before = parse(text).ok();
    let after = parse(&new).ok();
    let sound = match (before, after) {
        (Some(mut before), Some(after)) => {
            before.insert(key.to_string(), value.to_string());
            before == after
        }
        _ => false,
    };
    if sound {
        Ok(new)
    } else {
        Err(EnvError::Unrewritable { path: path.to_path_buf(), key: key.to_string() })
    }
}

/// `text` with `key` set to `value`: its last assignment is rewritten in place (keeping an
/// `export ` prefix, indentation and line ending), or a line is appended in the file's style.
pub fn set(text: &str, key: &str, value: &str) -> String {
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let assignment = format!("{key}={}", quote(value));
    if let Some(i) = lines.iter().rposition(|l| assigns(l, key)) {
        let line = lines[i];
        let body_end = line.len() - (line.len() - line.trim_end_matches(['\n', '\r']).len());
        let prefix_len = line.find(key).unwrap_or(0);
        let mut out = String::with_capacity(text.len() + value.len());
        lines[..i].iter().for_each(|l| out.push_str(l));
        out.push_str(&line[..prefix_len]);
        out.push_str(&assignment);
        out.push_str(&line[body_end..]);
        lines[i + 1..].iter().for_each(|l| out.push_str(l));
        return out;
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push_str(newline);
    }
    out.push_str(&assignment);
    out.push_str(newline);
    out
}

/// Quoted so that dotenvy and docker compose read back exactly `value`: single quotes are taken
/// literally by both (no `$` expansion); a value holding a single quote or a backslash (dotenvy's
/// line reader takes `\'` as an escaped quote) falls back to double quotes with `\`, `"` and `$`
/// escaped. Values never hold line breaks (validated before).
pub fn quote(value: &str) -> String {
    if !value.contains(['\'', '\\']) {
        return format!("'{value}'");
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Is this line an assignment of `key` (`KEY=`, ` export KEY =`)?
fn assigns(line: &str, key: &str) -> bool {
    let l = line.trim_start();
    let l = l.strip_prefix("export ").map(str::trim_start).unwrap_or(l);
    l.strip_prefix(key).map(|rest| rest.trim_start().starts_with('=')).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::IndexedRandom;
    use rand::Rng;

    #[test]
    fn rewrites_in_place_keeping_everything_else() {
        let text = "# comment\r\nA=1\r\n\r\nexport TOKEN=$2b$12$abc # old\r\nB='x y'\r\n";
        let out = set(text, "TOKEN", "$2b$new");
        assert_eq!(out, "# comment\r\nA=1\r\n\r\nexport TOKEN='$2b$new'\r\nB='x y'\r\n");
    }

    #[test]
    fn appends_in_the_file_style() {
        assert_eq!(set("A=1", "K", "v"), "A=1\nK='v'\n");
        assert_eq!(set("A=1\r\n", "K", "v"), "A=1\r\nK='v'\r\n");
        assert_eq!(set("", "K", "v"), "K='v'\n");
    }

    #[test]
    fn unquoted_dollar_is_expanded_by_dotenvy() {
        // Why we quote: the seed report's mangled token.
        let values = parse("T=$2b$12$NErya5UooY9bJnscVc/ec.hpVDX\n").unwrap();
        assert_ne!(values["T"], "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX");
        let values = parse(&set("", "T", "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX")).unwrap();
        assert_eq!(values["T"], "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = parse("A=1\n# ok\nB=two words\n").unwrap_err();
        assert_eq!(e.line(), 3);
        assert!(e.to_string().contains("'B=two words'"), "{e}");
        let e = EnvFile::parse(Path::new("/x/.env"), b"A=1\nB=two words\n").unwrap_err();
        assert!(e.to_string().starts_with("/x/.env line 2: cannot parse 'B=two words'"), "{e}");
    }

    const POOL: &[&str] = &[
        "a", "Z", "0", "$", "'", "\"", "#", "!", "\\", " ", "=", "é", "ß", "日本", "🔑", "{", "}", "`", "%", ";",
        "$HOME", "${X}", "\\n", "/", ".",
    ];

    fn random_value(rng: &mut impl Rng) -> String {
        let n = rng.random_range(1..20);
        let mut s: String = (0..n).map(|_| *POOL.choose(rng).unwrap()).collect();
        // Passwords never start or end with whitespace (refused before any write).
        s = s.trim().to_string();
        if s.is_empty() {
            s.push('x');
        }
        s
    }

    fn random_env(rng: &mut impl Rng) -> (String, Vec<(String, String)>) {
        let nl = if rng.random_bool(0.3) { "\r\n" } else { "\n" };
        let mut text = String::new();
        let mut keys = Vec::new();
        for i in 0..rng.random_range(0..8) {
            match rng.random_range(0..5) {
                0 => text.push_str(&format!("# comment {i} with $ and 'quotes'{nl}")),
                1 => text.push_str(nl),
                2 => {
                    let k = format!("PLAIN_{i}");
                    text.push_str(&format!("{k}=value{i}{nl}"));
                    keys.push((k, format!("value{i}")));
                }
                3 => {
                    let k = format!("SINGLE_{i}");
                    text.push_str(&format!("{k}='a $b \"c\" #d'{nl}"));
                    keys.push((k, "a $b \"c\" #d".into()));
                }
                _ => {
                    let k = format!("EXPORTED_{i}");
                    text.push_str(&format!("export {k}=\"two words\"{nl}"));
                    keys.push((k, "two words".into()));
                }
            }
        }
        if rng.random_bool(0.3) {
            text.push_str(&format!("COMFYUI_PASSWORD=old{nl}"));
        }
        if rng.random_bool(0.2) && text.ends_with(nl) {
            text.truncate(text.len() - nl.len()); // no final newline
        }
        (text, keys)
    }

    #[test]
    fn property_written_values_read_back_exactly_and_nothing_else_changes() {
        let mut rng = rand::rng();
        for _ in 0..2000 {
            let (text, others) = random_env(&mut rng);
            let value = random_value(&mut rng);
            let out = set(&text, "COMFYUI_PASSWORD", &value);
            let values = parse(&out).unwrap_or_else(|e| panic!("unparseable after set({value:?}): {e:?}\n{out}"));
            assert_eq!(values["COMFYUI_PASSWORD"], value, "file:\n{out}");
            for (k, v) in &others {
                assert_eq!(&values[k], v);
            }
            // Only the password line differs: the rest is byte for byte the same.
            let strip = |t: &str| {
                t.split_inclusive('\n')
                    .filter(|l| !l.starts_with("COMFYUI_PASSWORD="))
                    .map(|l| l.trim_end_matches(['\r', '\n']).to_string())
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&text), strip(&out));
            assert!(out.starts_with(text.trim_end_matches(['\r', '\n']).split("COMFYUI_PASSWORD=").next().unwrap()));
        }
    }
}
