//! Robust single-file downloads over HTTP(S): resume, retries and sha256 checks.
//!
//! [`download`] fetches one URL to one path. The protocol, shaped by Hugging Face `/resolve/` URLs:
//!
//! - **Reuse.** An existing destination is returned without touching the network when its sha256
//!   equals the pinned hash or, with no pin, the `<dest>.sha256` sidecar that an earlier successful
//!   download wrote. A destination that contradicts the pin is an error asking the user to delete it.
//! - **Requests.** Bytes arrive in `<dest>.part`. Each attempt sends `GET` (with `Range: bytes=N-` on
//!   every hop when the `.part` already holds N bytes) and follows redirects itself, at most
//!   [`MAX_HOPS`]. Hugging Face answers `/resolve/` with a 302 to its CDN whose headers carry
//!   `X-Linked-Etag` (the file's sha256) and `X-Linked-Size`; the first of each seen is kept, and a
//!   plain `ETag` of 64 hex digits on the final response counts when no `X-Linked-Etag` came. A server
//!   sha256 that contradicts the pin fails at once, before any body byte is used.
//! - **Responses.** `206` whose `Content-Range` starts at N is appended; `200` means the server
//!   ignored the range, so the `.part` restarts from zero; `416` with a `.part` of the full size means
//!   it is already complete. Other 4xx fail at once (except 408 and 429, which are retried). 5xx,
//!   connection errors, timeouts and bodies cut short are retried with exponential backoff (capped at
//!   30 s), keeping the bytes already written so the next attempt resumes.
//! - **Verification.** Once the expected size is reached (or the body ends with no size known) the
//!   `.part` is hashed and compared with the pin, else the server's sha256. A mismatch deletes the
//!   `.part` and is an error; with neither known, the file is accepted with a warning. The `.part` is
//!   then fsynced, renamed onto the destination, the sidecar written and the directory fsynced.
//! - **Unreachable hosts.** DNS failures and refused, unreachable or timed-out connections end in a
//!   one-line [`Unreachable`] error, `cannot reach HOST (REASON)`, recognised by [`is_unreachable`]
//!   so that callers can add their own hint. DNS failures, and a host that could not be reached
//!   before any byte arrived, give up after [`DNS_ATTEMPTS`] attempts.
//! - **Failure leaves nothing empty.** A download that fails removes an empty `.part` and the
//!   directories it created that are still empty; a `.part` with bytes in it stays (with its
//!   directory), so the next run resumes it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ureq::http::{HeaderMap, Response, Uri};

use crate::util::{create_dirs, remove_empty_dirs, sha256_file, write_atomic};

/// Redirects followed per attempt.
pub const MAX_HOPS: usize = 5;
/// Attempts spent on a host name that does not resolve, or on a host never reached (no byte kept),
/// before giving up.
pub const DNS_ATTEMPTS: u32 = 2;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CHUNK: usize = 256 << 10;

/// One file to fetch. `sha256` is the pinned expected content hash (lowercase hex), if known.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// Full URL; redirects are followed.
    pub url: String,
    /// Pinned sha256 of the content (hex; compared case-insensitively).
    pub sha256: Option<String>,
    /// Expected size in bytes, used when the server does not say.
    pub size: Option<u64>,
}

/// How hard and how visibly [`download`] tries.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Attempts after the first (default 5).
    pub retries: u32,
    /// First retry delay, doubled each retry, capped at 30 s (default 1 s).
    pub backoff: Duration,
    /// Budget for DNS resolution and for connecting (default 20 s).
    pub connect_timeout: Duration,
    /// Longest silence while waiting for the response or reading the body (default 60 s).
    pub read_timeout: Duration,
    /// Draw a progress line on stderr (default true).
    pub progress: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            retries: 5,
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            progress: true,
        }
    }
}

/// What was downloaded (or found already complete).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Downloaded {
    /// The URL asked for (before redirects).
    pub url: String,
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// True when an existing, verified file was reused without any request.
    pub skipped: bool,
}

/// The host could not be reached at all: its name does not resolve, or connecting failed.
/// Displays as the single line `cannot reach HOST (REASON)`.
#[derive(Debug, Clone)]
pub struct Unreachable {
    /// Host of the URL tried, e.g. `huggingface.co`.
    pub host: String,
    /// Short reason, e.g. `connection refused`.
    pub reason: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot reach {} ({})", self.host, self.reason)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `err` (or anything in its chain) is an [`Unreachable`] error, so that callers can add a
/// hint such as where to put local copies of the files.
pub fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Unreachable>())
}

/// Downloads `file` to `dest` (see the module documentation for the protocol), or returns the
/// existing `dest` with `skipped: true` when it is already verified.
pub fn download(file: &RemoteFile, dest: &Path, opts: &DownloadOptions) -> Result<Downloaded> {
    let pin = file.sha256.as_deref().map(|s| s.trim().to_ascii_lowercase());
    if let Some(done) = reuse_existing(file, pin.as_deref(), dest)? {
        return Ok(done);
    }
    let created = match dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => create_dirs(dir).with_context(|| format!("cannot create directory {}", dir.display()))?,
        None => Vec::new(),
    };
    let result = fetch_to(file, pin.as_deref(), dest, opts);
    if result.is_err() {
        // Keep what can be resumed (a `.part` with bytes in it); take away what holds nothing.
        let part = with_suffix(dest, ".part");
        if fs::metadata(&part).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = fs::remove_file(&part);
        }
        remove_empty_dirs(&created);
    }
    result
}

/// [`download`] once `dest`'s directory exists: the attempts, then the check and the rename.
fn fetch_to(file: &RemoteFile, pin: Option<&str>, dest: &Path, opts: &DownloadOptions) -> Result<Downloaded> {
    let part = with_suffix(dest, ".part");
    let name = dest.file_name().map_or_else(|| dest.display().to_string(), |n| n.to_string_lossy().into_owned());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("genesis/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(opts.connect_timeout))
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .build()
        .into();
    let mut fetch = Fetch {
        agent,
        file,
        pin,
        part: &part,
        server: Server::default(),
        progress: Progress::new(name.clone(), opts.progress),
    };
    let attempts = opts.retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let (reason, unreachable, dns) = match fetch.attempt() {
            Ok(()) => break,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(reason)) => (reason, None, false),
            Err(Failure::Unreachable(u, dns)) => (u.reason.clone(), Some(u), dns),
        };
        let kept = file_len(&part);
        // A host never reached (nothing kept) is given up on quickly: the network is probably off.
        let never_reached = unreachable.is_some() && kept == 0;
        if attempt >= attempts || ((dns || never_reached) && attempt >= DNS_ATTEMPTS) {
            if let Some(u) = unreachable {
                return Err(u.into());
            }
            bail!(
                "download of {} failed after {attempt} attempt{} ({reason}); run the same command again to resume{}",
                file.url,
                if attempt == 1 { "" } else { "s" },
                if kept > 0 { format!(" from the {} kept in {}", mb(kept), part.display()) } else { String::new() }
            );
        }
        let delay = opts.backoff.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_BACKOFF);
        let resume = if kept > 0 { format!(", resuming at {}", mb(kept)) } else { String::new() };
        eprintln!(
            "download of {name} interrupted ({reason}); retrying in {} (attempt {} of {attempts}){resume}",
            seconds(delay),
            attempt + 1
        );
        std::thread::sleep(delay);
        attempt += 1;
    }
    fetch.finish(dest)
}

/// Returns `dest` as already downloaded when it is verified; errors when it contradicts the pin.
fn reuse_existing(file: &RemoteFile, pin: Option<&str>, dest: &Path) -> Result<Option<Downloaded>> {
    let meta = match fs::metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dest.display())),
    };
    if !meta.is_file() {
        bail!("{} exists but is not a regular file; move it away and run again", dest.display());
    }
    let trusted = match pin {
        Some(p) => p.to_string(),
        None => match read_sidecar(dest) {
            Some(s) => s,
            None => return Ok(None),
        },
    };
    let actual = sha256_file(dest)?;
    if actual == trusted {
        let path = dest.to_path_buf();
        return Ok(Some(Downloaded { url: file.url.clone(), path, bytes: meta.len(), sha256: actual, skipped: true }));
    }
    if let Some(p) = pin {
        bail!(
            "{} already exists but its sha256 is {actual}, not the {p} that Genesis pins for {}; \
             delete it and run again",
            dest.display(),
            file.url
        );
    }
    Ok(None) // stale sidecar: fetch it again
}

/// Why an attempt failed.
enum Failure {
    /// Retrying cannot help.
    Fatal(anyhow::Error),
    /// Worth another attempt.
    Retry(String),
    /// The host could not be reached; `true` when its name did not resolve.
    Unreachable(Unreachable, bool),
}

/// What the server said about the file, kept across attempts.
#[derive(Default)]
struct Server {
    sha256: Option<String>,
    size: Option<u64>,
}

struct Fetch<'a> {
    agent: ureq::Agent,
    file: &'a RemoteFile,
    pin: Option<&'a str>,
    part: &'a Path,
    server: Server,
    progress: Progress,
}

impl Fetch<'_> {
    /// One attempt: request (following redirects), then stream the body into the `.part`.
    fn attempt(&mut self) -> Result<(), Failure> {
        let have = file_len(self.part);
        let mut seen = Server::default();
        let (response, url) = self.request(have, &mut seen)?;
        let url_note = if url == self.file.url { String::new() } else { format!(" (redirected to {url})") };
        if let (Some(new), Some(old)) = (&seen.sha256, &self.server.sha256) {
            if new != old {
                self.truncate_part()?;
                self.server = seen;
                return Err(Failure::Retry("the server's copy changed during the download; starting over".into()));
            }
        }
        self.server.sha256 = self.server.sha256.take().or(seen.sha256);
        self.server.size = self.server.size.or(seen.size);
        let known_size = self.server.size.or(self.file.size);

        let status = response.status().as_u16();
        let headers = response.headers();
        let content_length = header(headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let range = header(headers, "content-range").and_then(parse_content_range);
        let (offset, total) = match status {
            200 => {
                self.truncate_part()?;
                (0, content_length.or(known_size))
            }
            206 => match range {
                Some((Some(start), total)) if start == have => (have, total.or(content_length.map(|l| have + l))),
                _ => {
                    self.truncate_part()?;
                    return Err(Failure::Retry(format!("the server did not resume at byte {have}; starting over")));
                }
            },
            416 => {
                if have > 0 && range.and_then(|r| r.1).or(known_size) == Some(have) {
                    return Ok(()); // the .part already holds the whole file
                }
                self.truncate_part()?;
                return Err(Failure::Retry(format!("the server cannot resume at byte {have}; starting over")));
            }
            408 | 429 | 500..=599 => return Err(Failure::Retry(format!("HTTP {status}{url_note}"))),
            401 | 403 => {
                return Err(Failure::Fatal(anyhow!(
                    "download of {} failed: HTTP {status}{url_note}; the file may be private or gated, or the URL \
                     is wrong — check it in a browser",
                    self.file.url
                )))
            }
            _ => {
                return Err(Failure::Fatal(anyhow!(
                    "download of {} failed: HTTP {status}{url_note}; check the URL",
                    self.file.url
                )))
            }
        };

        let open = OpenOptions::new().create(true).append(true).open(self.part);
        let mut out = open.map_err(|e| self.io_fatal(e, "cannot open"))?;
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        let mut done = offset;
        self.progress.begin(done, total);
        let ended = loop {
            match body.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = out.write_all(&buf[..n]) {
                        self.progress.end();
                        return Err(self.io_fatal(e, "cannot write"));
                    }
                    done += n as u64;
                    self.progress.update(done, total);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        self.progress.end();
        out.flush().map_err(|e| self.io_fatal(e, "cannot write"))?;
        match (ended, total) {
            (Err(e), _) => Err(Failure::Retry(body_error(&e))),
            (Ok(()), Some(total)) if done < total => {
                Err(Failure::Retry(format!("connection closed at {} of {}", mb(done), mb(total))))
            }
            (Ok(()), _) => Ok(()),
        }
    }

    /// Sends the GET, following up to [`MAX_HOPS`] redirects; records the server's hash and size.
    fn request(&self, have: u64, seen: &mut Server) -> Result<(Response<ureq::Body>, String), Failure> {
        let mut url = self.file.url.clone();
        for _ in 0..=MAX_HOPS {
            let mut req = self.agent.get(&url);
            if have > 0 {
                req = req.header("Range", format!("bytes={have}-"));
            }
            let response = req.call().map_err(|e| call_failure(e, &url))?;
            let headers = response.headers();
            if seen.sha256.is_none() {
                seen.sha256 = header(headers, "x-linked-etag").and_then(etag_sha256);
            }
            if seen.size.is_none() {
                seen.size = header(headers, "x-linked-size").and_then(|v| v.trim().parse().ok());
            }
            let status = response.status();
            let last = !status.is_redirection() || status.as_u16() == 304;
            if last && seen.sha256.is_none() && matches!(status.as_u16(), 200 | 206) {
                seen.sha256 = header(headers, "etag").and_then(etag_sha256);
            }
            // checked before following a redirect or reading a body, so no body byte is ever used
            if let (Some(pin), Some(etag)) = (self.pin, &seen.sha256) {
                if pin != etag {
                    return Err(Failure::Fatal(anyhow!(
                        "the server's copy of {} has sha256 {etag} but Genesis pins {pin}; the upstream file changed \
                         — check the revision in the URL, or update the pinned hash if the new file is intended",
                        self.file.url
                    )));
                }
            }
            if last {
                return Ok((response, url));
            }
            let Some(location) = header(headers, "location") else {
                return Err(Failure::Fatal(anyhow!("{url} answered HTTP {status} without a Location; check the URL")));
            };
            url = join_url(&url, location).map_err(Failure::Fatal)?;
        }
        Err(Failure::Fatal(anyhow!("{} redirected more than {MAX_HOPS} times; check the URL", self.file.url)))
    }

    /// Verifies the complete `.part` and moves it onto `dest` with its sidecar.
    fn finish(&self, dest: &Path) -> Result<Downloaded> {
        let url = &self.file.url;
        let part = self.part;
        let actual = sha256_file(part)?;
        let bytes = file_len(part);
        let expected = match (self.pin, self.server.sha256.as_deref()) {
            (Some(pin), _) => Some((pin, "pinned by Genesis")),
            (None, Some(etag)) => Some((etag, "from the server")),
            (None, None) => None,
        };
        match expected {
            Some((want, source)) if want != actual => {
                let removed = match fs::remove_file(part) {
                    Ok(()) => "the download was deleted".to_string(),
                    Err(e) => format!("delete {} ({e})", part.display()),
                };
                bail!(
                    "download of {url} is corrupt: expected sha256 {want} ({source}) but got {actual} \
                     ({bytes} bytes); {removed}, run the command again"
                );
            }
            Some(_) => {}
            None => eprintln!(
                "warning: {url} could not be verified (no pinned sha256 and the server sent none); \
                 its sha256 is {actual}"
            ),
        }
        File::open(part).and_then(|f| f.sync_all()).with_context(|| format!("cannot fsync {}", part.display()))?;
        fs::rename(part, dest).with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
        // Atomic too; its directory fsync also makes the rename above durable.
        write_atomic(&with_suffix(dest, ".sha256"), format!("{actual}\n").as_bytes())?;
        Ok(Downloaded { url: url.clone(), path: dest.to_path_buf(), bytes, sha256: actual, skipped: false })
    }

    fn truncate_part(&self) -> Result<(), Failure> {
        match OpenOptions::new().write(true).open(self.part).and_then(|f| f.set_len(0)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io_fatal(e, "cannot truncate")),
            _ => Ok(()),
        }
    }

    fn io_fatal(&self, e: io::Error, what: &str) -> Failure {
        Failure::Fatal(anyhow::Error::new(e).context(format!("{what} {}", self.part.display())))
    }
}

/// Classifies an error from sending a request (before any response arrived).
fn call_failure(err: ureq::Error, url: &str) -> Failure {
    use io::ErrorKind as K;
    let host = url.parse::<Uri>().ok().and_then(|u| u.host().map(str::to_string)).unwrap_or_else(|| url.to_string());
    let unreachable = |reason: String, dns: bool| Failure::Unreachable(Unreachable { host: host.clone(), reason }, dns);
    match err {
        ureq::Error::HostNotFound => unreachable("host not found".into(), true),
        ureq::Error::Timeout(ureq::Timeout::Resolve) => unreachable("DNS lookup timed out".into(), true),
        ureq::Error::Timeout(ureq::Timeout::Connect) => unreachable("connection timed out".into(), false),
        ureq::Error::Io(e) => match e.kind() {
            K::ConnectionRefused => unreachable("connection refused".into(), false),
            K::TimedOut => unreachable("connection timed out".into(), false),
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
                unreachable(e.kind().to_string(), false)
            }
            _ if !resolves(url) => {
                let msg = e.to_string();
                let detail = msg.strip_prefix("failed to lookup address information: ").unwrap_or(&msg);
                unreachable(format!("DNS lookup failed: {}", one_line(detail)), true)
            }
            _ => Failure::Retry(one_line(&e.to_string())),
        },
        e @ (ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)) => Failure::Fatal(anyhow!(
            "TLS error talking to {host} ({e}); check the system clock and any proxy or firewall that intercepts HTTPS"
        )),
        e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl) => {
            Failure::Fatal(anyhow!("cannot request {url} ({e}); check the URL and any HTTP(S)_PROXY setting"))
        }
        ureq::Error::Timeout(t) => Failure::Retry(format!("timed out ({t})")),
        e => Failure::Retry(one_line(&e.to_string())),
    }
}

/// A short reason for an error while reading a response body.
fn body_error(e: &io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<ureq::Error>()) {
        Some(ureq::Error::Timeout(_)) => "read timed out".to_string(),
        _ if e.kind() == io::ErrorKind::UnexpectedEof => "connection closed early".to_string(),
        _ => format!("connection lost: {}", one_line(&e.to_string())),
    }
}

/// Whether the URL's host name resolves (used to tell DNS failures from other I/O errors).
fn resolves(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
    (host, port).to_socket_addrs().is_ok_and(|mut addrs| addrs.next().is_some())
}

/// Resolves a `Location` header against the URL that answered it.
fn join_url(base: &str, location: &str) -> Result<String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let uri: Uri = base.parse().with_context(|| format!("cannot parse URL {base}"))?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).context(format!("URL {base} has no host"))?;
    Ok(if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = uri.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{authority}{dir}{location}")
    })
}

/// The sha256 in an `ETag`/`X-Linked-Etag` value (`"hex"`, `W/"hex"` or bare), if it is one.
fn etag_sha256(value: &str) -> Option<String> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

/// `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`) as (start, total).
fn parse_content_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let start = span.split_once('-').and_then(|(s, _)| s.trim().parse().ok());
    Some((start, total.trim().parse().ok()))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn read_sidecar(dest: &Path) -> Option<String> {
    let text = fs::read_to_string(with_suffix(dest, ".sha256")).ok()?;
    text.split_whitespace().next().map(str::to_ascii_lowercase)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// The stderr progress line: redrawn in place on a terminal, one plain line per 10% otherwise.
struct Progress {
    enabled: bool,
    tty: bool,
    name: String,
    started: Instant,
    base: u64,
    done: u64,
    total: Option<u64>,
    /// When the line was last drawn on the terminal, and how many bytes it showed.
    drawn: Option<(Instant, u64)>,
    tenth: u64,
    width: usize,
}

impl Progress {
    fn new(name: String, enabled: bool) -> Self {
        let tty = io::stderr().is_terminal();
        let started = Instant::now();
        Progress { enabled, tty, name, started, base: 0, done: 0, total: None, drawn: None, tenth: 0, width: 0 }
    }

    fn begin(&mut self, done: u64, total: Option<u64>) {
        self.started = Instant::now();
        (self.base, self.done, self.total, self.drawn) = (done, done, total, None);
        self.tenth = total.filter(|&t| t > 0).map_or(done >> 26, |t| done * 10 / t);
    }

    fn update(&mut self, done: u64, total: Option<u64>) {
        (self.done, self.total) = (done, total);
        if !self.enabled {
            return;
        }
        if self.tty {
            if self.drawn.is_none_or(|(t, _)| t.elapsed() >= Duration::from_millis(200)) {
                self.draw();
            }
        } else {
            // a plain line each time another tenth is done (every 64 MiB when the size is unknown)
            let tenth = total.filter(|&t| t > 0).map_or(done >> 26, |t| done * 10 / t);
            if tenth > self.tenth {
                self.tenth = tenth;
                eprintln!("{}", self.line(done, total));
            }
        }
    }

    fn draw(&mut self) {
        let line = self.line(self.done, self.total);
        self.width = self.width.max(line.len());
        eprint!("\r{line:<width$}", width = self.width);
        self.drawn = Some((Instant::now(), self.done));
    }

    /// Ends the attempt's line: the final state on a terminal, then a newline.
    fn end(&mut self) {
        if self.enabled && self.tty {
            if let Some((_, shown)) = self.drawn {
                if shown != self.done {
                    self.draw();
                }
                eprintln!();
            }
        } else if self.enabled && self.total.is_none() && self.done > self.base {
            eprintln!("{}", self.line(self.done, None));
        }
        self.drawn = None;
        self.width = 0;
    }

    fn line(&self, done: u64, total: Option<u64>) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { (done - self.base) as f64 / secs } else { 0.0 };
        let mut line = match total {
            Some(t) => {
                format!("{}  {:.1}/{:.1} MB  {:.1} MB/s", self.name, done as f64 / 1e6, t as f64 / 1e6, rate / 1e6)
            }
            None => format!("{}  {:.1} MB  {:.1} MB/s", self.name, done as f64 / 1e6, rate / 1e6),
        };
        if let Some(t) = total.filter(|_| rate > 0.0) {
            let eta = (t.saturating_sub(done) as f64 / rate).round() as u64;
            let (h, m, s) = (eta / 3600, eta / 60 % 60, eta % 60);
            line += &if h > 0 { format!("  ETA {h}:{m:02}:{s:02}") } else { format!("  ETA {m}:{s:02}") };
        }
        line
    }
}
