//! Where a download that carries a token really starts. aria2c sends its headers to every host a
//! redirect leads to, so a Hugging Face or Civitai token would reach the storage a download is
//! sent on to (a CDN, a bucket behind a signed URL). So curl follows the redirects first: a GET
//! of one byte (`--range 0-0`, and `--max-filesize 1` stops a server that ignores the range
//! before its body), with the URL and the token on stdin (`--config -`), never on an argv. curl
//! never sends a custom Authorization header to another host, port or scheme than the one asked
//! (CVE-2018-1000007, CVE-2022-27776), so its own hops are safe. aria2c then starts where the
//! redirects end, with the token only when that is still the manifest's host.

use std::io::Write;
use std::process::{Command, Stdio};

use super::manifest::shown_url;

/// Where aria2c starts a download.
#[derive(Debug, PartialEq, Eq)]
pub struct Start {
    pub url: String,
    /// Whether the token goes with it: the redirects stayed on the manifest's host.
    pub with_token: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "cannot run curl ({0}): install it (apt-get install curl). It follows a download's redirects first, so \
         that the token of auth_env goes to the manifest's host only"
    )]
    NoCurl(std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// curl's exit codes that still leave the last answer's URL known: done, the body stopped by
/// `--max-filesize`, and a timeout once the answer's headers were in.
const STOPPED_AT_THE_BODY: i32 = 63;
const TIMED_OUT: i32 = 28;

/// Follows `url`'s redirects with `token`, to where the download starts.
pub fn start_of(url: &str, token: &str) -> Result<Start, RedirectError> {
    let mut child = Command::new("curl")
        .args([
            "--config",
            "-",
            "--silent",
            "--show-error",
            "--location",
            "--max-redirs",
            "10",
            "--proto",
            "=https,http",
            "--proto-redir",
            "=https,http",
            "--range",
            "0-0",
            "--max-filesize",
            "1",
            "--connect-timeout",
            "30",
            "--max-time",
            "60",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{url_effective}",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RedirectError::NoCurl)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means curl is gone already: its status says why.
        let _ = stdin.write_all(config(url, token).as_bytes());
    }
    // curl writes a line or two: the answer's code and URL, and its error.
    let done = child.wait_with_output().map_err(RedirectError::NoCurl)?;
    let (out, err) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    let status = done.status;
    let why = || {
        let said = err.replace(token, "***");
        let said = said.lines().map(shown_url_in).collect::<Vec<_>>().join("; ");
        let code = status.code().map_or_else(|| "killed by a signal".into(), |c| format!("curl exit code {c}"));
        if said.is_empty() {
            code
        } else {
            format!("{code}: {said}")
        }
    };
    let (http_code, last) = out.split_once(' ').unwrap_or(("000", ""));
    let answered = http_code != "000" && !last.is_empty();
    match status.code() {
        Some(0 | STOPPED_AT_THE_BODY) if answered => {}
        Some(TIMED_OUT) if answered => {}
        _ => return Err(RedirectError::Failed(why())),
    }
    Ok(Start { url: last.to_string(), with_token: same_origin(url, last) })
}

/// curl's config (its man page, "-K, --config"): quoted strings, `\\` and `\"` escaped. The
/// manifest refuses line breaks in a URL and the token holds no control character.
fn config(url: &str, token: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("url = \"{}\"\nheader = \"Authorization: Bearer {}\"\n", quote(url), quote(token))
}

/// A line of curl's with every URL in it shown without query or credentials.
fn shown_url_in(line: &str) -> String {
    line.split(' ').map(|w| if w.contains("://") { shown_url(w) } else { w.to_string() }).collect::<Vec<_>>().join(" ")
}

/// Scheme, host and port (the default one when none is written), host in lower case.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match host_port.rfind(':') {
        Some(i) if !host_port[i..].contains(']') => (&host_port[..i], Some(&host_port[i + 1..])),
        _ => (host_port, None),
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        },
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Whether two URLs are one origin: the token may go to `b` when it may go to `a`.
fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_scheme_host_and_port_with_the_default_port() {
        assert!(same_origin(
            "https://huggingface.co/a/resolve/main/x",
            "https://HuggingFace.co:443/api/resolve-cache/x"
        ));
        assert!(same_origin("http://127.0.0.1:8080/a?token=1", "http://127.0.0.1:8080/b"));
        assert!(same_origin("http://[::1]:81/a", "http://[::1]:81/b"));
        assert!(!same_origin("https://huggingface.co/a", "https://cdn-lfs.huggingface.co/a"));
        assert!(!same_origin("https://civitai.com/api/download/models/1", "http://civitai.com/x"));
        assert!(!same_origin("http://127.0.0.1:8080/a", "http://127.0.0.1:8081/a"));
        assert!(!same_origin("http://127.0.0.1:8080/a", "http://127.0.0.2:8080/a"));
        assert!(!same_origin("https://h.co/a", "https://h.co.evil.example/a"));
        assert!(!same_origin("https://h.co/a", "https://user@evil.example/a"), "userinfo is not the host");
        assert!(!same_origin("https://h.co/a", ""), "nothing known is never the same");
        assert!(!same_origin("ftp://h.co/a", "ftp://h.co/a"), "an unknown scheme is never trusted");
    }

    #[test]
    fn the_config_quotes_what_curl_reads() {
        assert_eq!(
            config("https://h/x?a=\"b\"", "t\\k"),
            "url = \"https://h/x?a=\\\"b\\\"\"\nheader = \"Authorization: Bearer t\\\\k\"\n"
        );
    }

    #[test]
    fn a_curl_error_is_shown_without_queries() {
        assert_eq!(
            shown_url_in("curl: (22) The requested URL returned error: https://h/x?token=abc"),
            "curl: (22) The requested URL returned error: https://h/x"
        );
    }
}
