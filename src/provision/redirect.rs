//! Where a download that carries a token really starts. aria2c sends its headers to every host a
//! redirect leads to, so a Hugging Face or Civitai token would reach the storage a download is
//! sent on to (a CDN, a bucket behind a signed URL). So curl follows the redirects first: a GET
//! of one byte (`--range 0-0`; `--max-filesize` stops a server that ignores the range before a
//! large body), with the URL and the token on stdin (`--config -`), never on an argv. curl never
//! sends a custom Authorization header to another host, port or scheme than the one asked
//! (CVE-2018-1000007, CVE-2022-27776), so its own hops are safe. aria2c then starts where the
//! redirects end, with the token only when that is still the manifest's host, and with the same
//! User-Agent, so that a server answers both alike.
//!
//! It fails closed: unless the redirects end in a 2xx answer, no download starts (a 3xx means
//! curl stopped on the way, and aria2c would follow it with the token).

use std::io::Write;
use std::process::{Command, Stdio};

use super::manifest::shown_url;

/// What curl and aria2c both say they are.
pub const USER_AGENT: &str = concat!("comfy-init/", env!("CARGO_PKG_VERSION"));

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

/// curl's exit codes that leave the last answer known: the body stopped by `--max-filesize`,
/// and a timeout once the answer's headers were in.
const STOPPED_AT_THE_BODY: i32 = 63;
const TIMED_OUT: i32 = 28;

/// Follows `url`'s redirects with `token`, to where the download starts.
pub fn start_of(url: &str, token: &str) -> Result<Start, RedirectError> {
    // Redirects may leave https only when the manifest's URL is plain http (loopback, no token
    // crosses a network); from https a download never goes on in clear text.
    let redirects_to = if url.starts_with("https://") { "=https" } else { "=https,http" };
    let mut child = Command::new("curl")
        .args([
            // First, or it is not obeyed: no ~/.curlrc (PUID's home, which a custom node can write).
            "--disable",
            "--config",
            "-",
            "--globoff",
            "--silent",
            "--show-error",
            "--location",
            "--max-redirs",
            "10",
            "--proto",
            "=https,http",
            "--proto-redir",
            redirects_to,
            "--user-agent",
            USER_AGENT,
            "--range",
            "0-0",
            // Not 1: curl 7.88 applies it to the body of a redirect too (curl #14899), and
            // Hugging Face's 302 has one.
            "--max-filesize",
            "1048576",
            "--connect-timeout",
            "30",
            "--max-time",
            "30",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{url_effective}\\n",
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
    let done = child.wait_with_output().map_err(|e| RedirectError::Failed(format!("curl: {e}")))?;
    let (out, err) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    judge(url, done.status.code(), &out).map_err(|why| {
        let said = err.replace(token, "***").lines().map(shown_url_in).collect::<Vec<_>>().join("; ");
        RedirectError::Failed(if said.is_empty() { why } else { format!("{why}: {said}") })
    })
}

/// Where the download starts, from curl's exit code and its `--write-out` line; Err: why none.
fn judge(url: &str, exit: Option<i32>, out: &str) -> Result<Start, String> {
    let exit_said = || exit.map_or_else(|| "curl was killed by a signal".into(), |c| format!("curl exit code {c}"));
    let mut lines = out.lines();
    let (Some(line), None) = (lines.next(), lines.next()) else { return Err(exit_said()) };
    let (code, last) = line.split_once(' ').unwrap_or(("000", ""));
    let code: u16 = code.parse().unwrap_or(0);
    if code == 0 || last.is_empty() || !matches!(exit, Some(0 | STOPPED_AT_THE_BODY | TIMED_OUT)) {
        return Err(exit_said());
    }
    match code {
        200..=299 => Ok(Start { url: last.to_string(), with_token: same_origin(url, last) }),
        300..=399 => {
            Err(format!("the redirects did not end (HTTP {code} at {}); nothing was sent on", shown_url(last)))
        }
        401 | 403 if same_origin(url, last) => Err(format!("HTTP {code}: the server refused the token; check it")),
        _ => Err(format!("HTTP {code} from {}", shown_url(last))),
    }
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
pub(crate) fn origin(url: &str) -> Option<(String, String, u16)> {
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
pub(crate) fn same_origin(a: &str, b: &str) -> bool {
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
    fn only_a_2xx_at_the_end_of_the_redirects_starts_a_download() {
        let url = "https://h.co/m/resolve/x?download=1";
        let cdn = "https://cdn.example/x?X-Amz-Signature=s";
        let start = |url: &str, with_token| Ok(Start { url: url.to_string(), with_token });
        assert_eq!(judge(url, Some(0), &format!("206 {cdn}\n")), start(cdn, false));
        assert_eq!(judge(url, Some(0), &format!("206 {url}\n")), start(url, true));
        // A server that ignores the range, stopped before its body.
        assert_eq!(judge(url, Some(63), &format!("200 {cdn}\n")), start(cdn, false));
        // curl stopped at a redirect (its body, a timeout, too many hops): aria2c would follow it.
        for exit in [0, 28, 47, 63] {
            let said = judge(url, Some(exit), &format!("302 {url}\n")).unwrap_err();
            assert!(said.contains("HTTP 302 at https://h.co/m/resolve/x)") || exit == 47, "{exit}: {said}");
        }
        assert!(judge(url, Some(0), &format!("401 {url}\n")).unwrap_err().contains("refused the token"));
        assert_eq!(judge(url, Some(0), &format!("403 {cdn}\n")).unwrap_err(), "HTTP 403 from https://cdn.example/x");
        // No answer, a failure, or two transfers (a URL curl would have expanded).
        assert_eq!(judge(url, Some(7), "000 \n").unwrap_err(), "curl exit code 7");
        assert_eq!(judge(url, Some(56), &format!("206 {cdn}\n")).unwrap_err(), "curl exit code 56");
        assert!(judge(url, Some(0), &format!("206 {url}\n206 {cdn}\n")).is_err());
        assert!(judge(url, None, "").unwrap_err().contains("signal"));
    }

    #[test]
    fn a_curl_error_is_shown_without_queries() {
        assert_eq!(
            shown_url_in("curl: (22) The requested URL returned error: https://h/x?token=abc"),
            "curl: (22) The requested URL returned error: https://h/x"
        );
    }
}
