//! `data::download` against a scripted HTTP/1.1 server on 127.0.0.1: Hugging Face style redirects,
//! resume after a dropped connection, servers that ignore `Range`, retries, checksum failures,
//! unreachable hosts and 404s.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::temp_dir;
use genesis::data::download::{download, is_unreachable, DownloadOptions, Downloaded, RemoteFile};
use genesis::util::{sha256_file, sha256_hex};

/// How the server answers one connection.
#[derive(Clone)]
enum Step {
    /// 302 to a relative `/cdn/...` location, with `X-Linked-Etag: "<etag>"` and `X-Linked-Size`.
    Redirect { etag: String },
    /// The payload: 206 + `Content-Range` when asked for a range and `honor_range`, else 200. With
    /// `cut_at`, the headers promise the full length but the socket closes after that absolute byte.
    Serve { honor_range: bool, cut_at: Option<usize> },
    /// A bare status with a short body.
    Status(u16),
    /// 416 with `Content-Range: bytes */<payload length>`.
    NotSatisfiable,
}

/// One request the server saw.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// A scripted HTTP/1.1 server: one [`Step`] per connection, in order, then it stops by itself.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(payload: Arc<Vec<u8>>, script: Vec<Step>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            for step in script {
                let stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break Some(s),
                        Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                        Err(_) => break None,
                    }
                };
                let Some(stream) = stream else { return };
                let _ = serve(stream, &step, &payload, &log);
            }
        });
        Server { addr, seen, thread: Some(thread) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for the script to finish (or time out) and returns the requests seen.
    fn finish(mut self) -> Vec<Seen> {
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
        self.seen.lock().expect("lock").clone()
    }
}

fn serve(stream: TcpStream, step: &Step, payload: &[u8], log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    log.lock().expect("lock").push(Seen { path: path.clone(), range: range.clone() });

    let mut out = stream;
    let total = payload.len();
    match step {
        Step::Redirect { etag } => {
            let name = path.rsplit('/').next().unwrap_or("file");
            write!(
                out,
                "HTTP/1.1 302 Found\r\nLocation: /cdn/{name}\r\nX-Linked-Etag: \"{etag}\"\r\nX-Linked-Size: {total}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
        Step::Serve { honor_range, cut_at } => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|_| *honor_range)
                .unwrap_or(0);
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\nContent-Length: {}\r\n",
                    total - 1,
                    total - start
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n")
            };
            write!(out, "{head}Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n")?;
            let end = cut_at.unwrap_or(total).clamp(start, total);
            out.write_all(&payload[start..end])?;
            out.flush()?;
        }
        Step::Status(code) => {
            let body = format!("status {code}\n");
            write!(
                out,
                "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
        Step::NotSatisfiable => {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )?;
        }
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Write)
}

/// A few hundred KB of deterministic bytes.
fn payload() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes = (0..300_000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    Arc::new(bytes)
}

fn fast() -> DownloadOptions {
    DownloadOptions {
        retries: 3,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        progress: false,
    }
}

fn part_of(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", dest.display()))
}

fn sidecar_of(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", dest.display()))
}

fn remote(url: String) -> RemoteFile {
    RemoteFile { url, sha256: None, size: None }
}

fn seen(path: &str, range: Option<&str>) -> Seen {
    Seen { path: path.to_string(), range: range.map(str::to_string) }
}

#[test]
fn downloads_through_redirect_and_then_skips() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(
        Arc::clone(&data),
        vec![Step::Redirect { etag: sha.clone() }, Step::Serve { honor_range: true, cut_at: None }],
    );
    let dir = temp_dir("plain");
    let dest = dir.join("train.parquet");
    let file = remote(server.url("/datasets/x/resolve/main/train.parquet"));

    let got = download(&file, &dest, &fast()).expect("download");
    assert_eq!(
        got,
        Downloaded {
            url: file.url.clone(),
            path: dest.clone(),
            bytes: data.len() as u64,
            sha256: sha.clone(),
            skipped: false
        }
    );
    assert_eq!(fs::read(&dest).expect("read dest"), *data);
    assert_eq!(fs::read_to_string(sidecar_of(&dest)).expect("sidecar").trim(), sha);
    assert!(!part_of(&dest).exists());
    assert_eq!(sha256_file(&dest).expect("hash"), sha);

    let requests = server.finish();
    assert_eq!(requests, vec![seen("/datasets/x/resolve/main/train.parquet", None), seen("/cdn/train.parquet", None)]);

    // Second call: verified through the sidecar, no request at all (the server has stopped, so any
    // request would fail with "connection refused").
    let again = download(&file, &dest, &fast()).expect("second download");
    assert!(again.skipped);
    assert_eq!(again.sha256, sha);
    assert_eq!(again.bytes, data.len() as u64);

    // With a pin and no sidecar, still no request.
    fs::remove_file(sidecar_of(&dest)).expect("remove sidecar");
    let pinned = RemoteFile { sha256: Some(sha.to_uppercase()), ..file.clone() };
    assert!(download(&pinned, &dest, &fast()).expect("pinned").skipped);
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn resumes_after_connection_drop() {
    let data = payload();
    let sha = sha256_hex(&data);
    let half = data.len() / 2 + 12_345;
    let server = Server::start(
        Arc::clone(&data),
        vec![
            Step::Redirect { etag: sha.clone() },
            Step::Serve { honor_range: true, cut_at: Some(half) },
            Step::Redirect { etag: sha.clone() },
            Step::Serve { honor_range: true, cut_at: None },
        ],
    );
    let dir = temp_dir("resume");
    let dest = dir.join("val.parquet");
    let file = RemoteFile {
        url: server.url("/resolve/main/val.parquet"),
        sha256: Some(sha.clone()),
        size: Some(data.len() as u64),
    };

    // progress on: exercises the progress line (plain lines, since stderr is not a terminal here)
    let got = download(&file, &dest, &DownloadOptions { progress: true, ..fast() }).expect("download");
    assert!(!got.skipped);
    assert_eq!(got.sha256, sha);
    assert_eq!(fs::read(&dest).expect("read dest"), *data);
    assert!(!part_of(&dest).exists());

    let requests = server.finish();
    let range = format!("bytes={half}-");
    assert_eq!(
        requests,
        vec![
            seen("/resolve/main/val.parquet", None),
            seen("/cdn/val.parquet", None),
            seen("/resolve/main/val.parquet", Some(&range)),
            seen("/cdn/val.parquet", Some(&range)),
        ]
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn restarts_when_server_ignores_range() {
    let data = payload();
    let sha = sha256_hex(&data);
    let cut = 100_000;
    let server = Server::start(
        Arc::clone(&data),
        vec![
            Step::Redirect { etag: sha.clone() },
            Step::Serve { honor_range: true, cut_at: Some(cut) },
            Step::Redirect { etag: sha.clone() },
            Step::Serve { honor_range: false, cut_at: None },
        ],
    );
    let dir = temp_dir("ignore-range");
    let dest = dir.join("test.parquet");
    let file = remote(server.url("/resolve/main/test.parquet"));

    let got = download(&file, &dest, &fast()).expect("download");
    assert_eq!(got.sha256, sha);
    assert_eq!(got.bytes, data.len() as u64);
    assert_eq!(fs::read(&dest).expect("read dest"), *data);

    let requests = server.finish();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[3], seen("/cdn/test.parquet", Some(&format!("bytes={cut}-"))));
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn retries_after_server_error() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(
        Arc::clone(&data),
        vec![Step::Status(500), Step::Redirect { etag: sha.clone() }, Step::Serve { honor_range: true, cut_at: None }],
    );
    let dir = temp_dir("retry-500");
    let dest = dir.join("a.parquet");
    let file = remote(server.url("/resolve/main/a.parquet"));

    let got = download(&file, &dest, &fast()).expect("download");
    assert_eq!(got.sha256, sha);
    assert_eq!(fs::read(&dest).expect("read dest"), *data);
    let requests = server.finish();
    assert_eq!(
        requests,
        vec![
            seen("/resolve/main/a.parquet", None),
            seen("/resolve/main/a.parquet", None),
            seen("/cdn/a.parquet", None)
        ]
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn checksum_mismatch_deletes_the_download() {
    let data = payload();
    let actual = sha256_hex(&data);
    let claimed = sha256_hex(b"some other file");
    let server = Server::start(
        Arc::clone(&data),
        vec![Step::Redirect { etag: claimed.clone() }, Step::Serve { honor_range: true, cut_at: None }],
    );
    let dir = temp_dir("mismatch");
    let dest = dir.join("b.parquet");
    let file = remote(server.url("/resolve/main/b.parquet"));

    let err = download(&file, &dest, &fast()).expect_err("a corrupt download must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains(&claimed) && msg.contains(&actual) && msg.contains(&file.url), "{msg}");
    assert!(!dest.exists());
    assert!(!part_of(&dest).exists());
    assert!(!sidecar_of(&dest).exists());
    assert_eq!(server.finish().len(), 2, "a checksum mismatch is not retried");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn pin_contradicting_server_fails_before_the_body() {
    let data = payload();
    let server_sha = sha256_hex(&data);
    let pin = sha256_hex(b"what Genesis expected");
    let server = Server::start(Arc::clone(&data), vec![Step::Redirect { etag: server_sha.clone() }]);
    let dir = temp_dir("pin");
    let dest = dir.join("c.parquet");
    let file = RemoteFile { url: server.url("/resolve/main/c.parquet"), sha256: Some(pin.clone()), size: None };

    let err = download(&file, &dest, &fast()).expect_err("pin mismatch must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains(&server_sha) && msg.contains(&pin) && msg.contains(&file.url), "{msg}");
    assert!(msg.contains("upstream file changed"), "{msg}");
    assert!(!dest.exists());
    assert!(!part_of(&dest).exists());
    // Only the redirect was requested: the body was never fetched and nothing was retried.
    assert_eq!(server.finish(), vec![seen("/resolve/main/c.parquet", None)]);
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn existing_file_contradicting_pin_is_an_error() {
    let dir = temp_dir("existing-bad");
    let dest = dir.join("d.parquet");
    fs::write(&dest, b"user's own file").expect("write");
    let pin = sha256_hex(b"the real file");
    // Nothing listens on this port: the check must not need the network.
    let file = RemoteFile {
        url: format!("http://{}/resolve/main/d.parquet", dead_addr()),
        sha256: Some(pin.clone()),
        size: None,
    };

    let msg = format!("{:#}", download(&file, &dest, &fast()).expect_err("must refuse"));
    assert!(msg.contains(&pin) && msg.contains(&sha256_hex(b"user's own file")) && msg.contains("delete it"), "{msg}");
    assert_eq!(fs::read(&dest).expect("read"), b"user's own file", "the user's file is left alone");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn complete_part_is_accepted_on_416() {
    let data = payload();
    let sha = sha256_hex(&data);
    let server = Server::start(Arc::clone(&data), vec![Step::Redirect { etag: sha.clone() }, Step::NotSatisfiable]);
    let dir = temp_dir("416");
    let dest = dir.join("e.parquet");
    fs::write(part_of(&dest), &*data).expect("write part");
    let file = remote(server.url("/resolve/main/e.parquet"));

    let got = download(&file, &dest, &fast()).expect("download");
    assert_eq!(got.sha256, sha);
    assert_eq!(fs::read(&dest).expect("read dest"), *data);
    let range = format!("bytes={}-", data.len());
    assert_eq!(
        server.finish(),
        vec![seen("/resolve/main/e.parquet", Some(&range)), seen("/cdn/e.parquet", Some(&range))]
    );
    fs::remove_dir_all(&dir).ok();
}

/// An address on 127.0.0.1 that nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

#[test]
fn unreachable_host_is_one_short_line() {
    let dir = temp_dir("unreachable");
    let dest = dir.join("f.parquet");
    let file = remote(format!("http://{}/resolve/main/f.parquet", dead_addr()));

    let started = Instant::now();
    let err = download(&file, &dest, &fast()).expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(msg.starts_with("cannot reach 127.0.0.1 ("), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(format!("{err:#}"), msg, "no extra context in the chain");
    assert!(is_unreachable(&err));
    assert!(is_unreachable(&err.context("while preparing wikitext-103")));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!dest.exists());
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn not_found_fails_at_once() {
    let data = payload();
    let server = Server::start(Arc::clone(&data), vec![Step::Status(404)]);
    let dir = temp_dir("404");
    let dest = dir.join("g.parquet");
    let file = remote(server.url("/resolve/main/missing.parquet"));

    let err = download(&file, &dest, &DownloadOptions { retries: 5, ..fast() }).expect_err("404 must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("404") && msg.contains(&file.url), "{msg}");
    assert!(!is_unreachable(&err));
    assert_eq!(server.finish(), vec![seen("/resolve/main/missing.parquet", None)]);
    assert!(!dest.exists());
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_failed_first_download_leaves_no_empty_directory() {
    let dir = temp_dir("failed-first");
    // Unreachable, a 404 and a 500 every time: nothing arrives, so nothing stays behind, not even
    // the directories the download created (data/wikitext/raw/ here).
    let dead = remote(format!("http://{}/resolve/main/f.parquet", dead_addr()));
    let dest = dir.join("data").join("wikitext").join("raw").join("f.parquet");
    assert!(is_unreachable(&download(&dead, &dest, &fast()).expect_err("nothing listens there")));
    assert!(!dir.join("data").exists(), "a failed first download left {}", dir.join("data").display());

    let server = Server::start(payload(), vec![Step::Status(404)]);
    download(&remote(server.url("/resolve/main/f.parquet")), &dest, &fast()).expect_err("404 must fail");
    server.finish();
    assert!(!dir.join("data").exists(), "a 404 left {}", dir.join("data").display());

    let server = Server::start(payload(), vec![Step::Status(500), Step::Status(500)]);
    let opts = DownloadOptions { retries: 1, ..fast() };
    download(&remote(server.url("/resolve/main/f.parquet")), &dest, &opts).expect_err("500s must fail");
    server.finish();
    assert!(!dir.join("data").exists(), "HTTP 500s left {}", dir.join("data").display());

    // A directory that was there before stays, empty or not.
    let raw = dir.join("raw");
    fs::create_dir(&raw).unwrap();
    download(&dead, &raw.join("f.parquet"), &fast()).expect_err("nothing listens there");
    assert!(raw.is_dir());
    assert_eq!(fs::read_dir(&raw).unwrap().count(), 0);
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_failed_partial_download_is_kept_and_resumes() {
    let data = payload();
    let sha = sha256_hex(&data);
    let cut = 100_000;
    let server = Server::start(Arc::clone(&data), vec![Step::Serve { honor_range: true, cut_at: Some(cut) }]);
    let dir = temp_dir("failed-partial");
    let dest = dir.join("data").join("raw").join("f.parquet");
    let file = RemoteFile { url: server.url("/f.parquet"), sha256: Some(sha.clone()), size: None };
    let err = download(&file, &dest, &DownloadOptions { retries: 0, ..fast() }).expect_err("cut short");
    server.finish();
    assert!(format!("{err:#}").contains("run the same command again to resume"), "{err:#}");
    assert_eq!(fs::metadata(part_of(&dest)).expect("the .part is kept").len(), cut as u64);

    let server = Server::start(Arc::clone(&data), vec![Step::Serve { honor_range: true, cut_at: None }]);
    let file = RemoteFile { url: server.url("/f.parquet"), ..file };
    let got = download(&file, &dest, &fast()).expect("resumed");
    assert_eq!(server.finish(), vec![seen("/f.parquet", Some(&format!("bytes={cut}-")))]);
    assert_eq!((got.sha256, fs::read(&dest).unwrap()), (sha, data.to_vec()));
    fs::remove_dir_all(&dir).ok();
}
