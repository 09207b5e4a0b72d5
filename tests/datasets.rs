//! Named datasets end to end against a small Hugging Face-like server on 127.0.0.1: generated
//! wikitext-style parquet files are resolved (302 + X-Linked-Etag), downloaded (one connection
//! dropped midway and resumed with Range), checked against their pinned sha256 and prepared into
//! train / val / test shards of whole articles.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{temp_dir, write_parquet_text};
use genesis::data::datasets::{self, NamedDataset, RemoteSpec, WIKITEXT_REVISION};
use genesis::data::download::DownloadOptions;
use genesis::data::manifest::{self, Manifest, Split};
use genesis::data::prepare::PrepareConfig;
use genesis::data::shard::Shard;
use genesis::data::tokenizer::Tokenizer;
use genesis::util::{sha256_file, sha256_hex};

/// Serves `files` (name -> bytes) at `/datasets/<repo>/resolve/<rev>/<config>/<name>` (a 302 to
/// `/cdn/<name>` with the pinned etag) and `/cdn/<name>` (with Range). The first body of each name
/// in `drop_first` is cut off halfway. Records every request as `path [range]`.
struct Hub {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Hub {
    fn start(files: HashMap<String, (Vec<u8>, String)>, drop_first: &[&str]) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, flag) = (requests.clone(), stop.clone());
        let mut to_drop: Vec<String> = drop_first.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &files, &mut to_drop, &log),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Hub { port, requests, stop }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    files: &HashMap<String, (Vec<u8>, String)>,
    to_drop: &mut Vec<String>,
    log: &Mutex<Vec<String>>,
) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse::<usize>().ok();
        }
    }
    log.lock().unwrap().push(match range_start {
        Some(r) => format!("{path} range {r}"),
        None => path.clone(),
    });
    let mut out = stream;
    let name = path.rsplit('/').next().unwrap_or("").to_string();
    let Some((bytes, sha)) = files.get(&name) else {
        let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    if path.contains("/resolve/") {
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: /cdn/{name}\r\nX-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            bytes.len()
        );
        let _ = out.write_all(head.as_bytes());
        return;
    }
    let start = range_start.unwrap_or(0).min(bytes.len());
    let body = &bytes[start..];
    let head = if range_start.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            bytes.len() - 1,
            bytes.len(),
            body.len()
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
    };
    let _ = out.write_all(head.as_bytes());
    if let Some(i) = to_drop.iter().position(|n| *n == name) {
        to_drop.remove(i);
        let _ = out.write_all(&body[..body.len() / 2]);
        let _ = out.flush();
        return; // the connection closes with half the body sent
    }
    let _ = out.write_all(body);
}

/// Wikitext-style rows (one line each, blank lines as ""), `articles` articles per file.
fn wikitext_rows(tag: &str, articles: usize) -> Vec<String> {
    let mut rows = Vec::new();
    for a in 0..articles {
        rows.push(String::new());
        rows.push(format!(" = {tag} article {a} = \n"));
        rows.push(String::new());
        for l in 0..30 {
            rows.push(format!(" Line {l} of {tag} article {a} , with some words @-@ and numbers {} . \n", a * l));
        }
        rows.push(String::new());
        rows.push(format!(" = = Section of {a} = = \n"));
        rows.push(" More text under the section . \n".to_string());
    }
    rows
}

/// Article texts (heading line through the last line before the next heading).
fn articles(rows: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let heading = r.starts_with(" = ") && !r.starts_with(" = = ");
        if heading || out.is_empty() {
            out.push(String::new());
        }
        out.last_mut().unwrap().push_str(r);
    }
    out.into_iter().filter(|a| !a.trim().is_empty()).collect()
}

struct Fixture {
    dir: std::path::PathBuf,
    dataset: NamedDataset,
    files: HashMap<String, (Vec<u8>, String)>,
    expected: HashMap<Split, Vec<String>>,
}

fn fixture(tag: &str) -> Fixture {
    let dir = temp_dir(tag);
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    let mut files = HashMap::new();
    let mut specs = Vec::new();
    let mut expected: HashMap<Split, Vec<String>> = HashMap::new();
    for (split, name, n) in [
        (Split::Train, "train-00000-of-00002.parquet", 6),
        (Split::Train, "train-00001-of-00002.parquet", 5),
        (Split::Val, "validation-00000-of-00001.parquet", 3),
        (Split::Test, "test-00000-of-00001.parquet", 2),
    ] {
        let rows = wikitext_rows(name, n);
        let refs: Vec<Option<&str>> = rows.iter().map(|r| Some(r.as_str())).collect();
        let path = src.join(name);
        write_parquet_text(&path, "text", &refs, 50);
        let bytes = fs::read(&path).unwrap();
        let sha = sha256_hex(&bytes);
        specs.push(RemoteSpec { split, file: name.into(), sha256: sha.clone() });
        files.insert(name.to_string(), (bytes, sha));
        expected.entry(split).or_default().extend(articles(&rows));
    }
    let dataset = NamedDataset {
        name: "wikitext-mini".into(),
        repo: "Salesforce/wikitext".into(),
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        config: "wikitext-mini-raw-v1".into(),
        files: specs,
        download_mb: 1,
    };
    Fixture { dir, dataset, files, expected }
}

fn quick() -> DownloadOptions {
    DownloadOptions { retries: 3, backoff: Duration::from_millis(10), progress: false, ..DownloadOptions::default() }
}

fn config() -> PrepareConfig {
    let mut cfg = PrepareConfig::new("wikitext-mini");
    cfg.progress = false;
    cfg.shard_tokens = 3000;
    cfg
}

fn decoded(dir: &Path, m: &Manifest, split: Split) -> String {
    let tokens: Vec<u32> = m
        .shard_paths(dir, split)
        .unwrap()
        .iter()
        .flat_map(|p| Shard::open(p).unwrap().tokens().iter().map(|&t| t as u32).collect::<Vec<_>>())
        .collect();
    Tokenizer::gpt2().unwrap().decode(&tokens)
}

#[test]
fn named_dataset_downloads_resumes_and_prepares_wikitext_splits() {
    let fx = fixture("hub");
    let hub = Hub::start(fx.files.clone(), &["train-00000-of-00002.parquet"]);
    let out = fx.dir.join("data").join("wikitext-mini");
    let report = fx.dataset.prepare(&out, &hub.endpoint(), None, config(), &quick()).unwrap();
    let m = &report.manifest;

    // The dropped download was resumed where it broke.
    let reqs = hub.requests();
    let cdn: Vec<&String> = reqs.iter().filter(|r| r.starts_with("/cdn/train-00000")).collect();
    assert_eq!(cdn.len(), 2, "requests: {reqs:?}");
    let half = fx.files["train-00000-of-00002.parquet"].0.len() / 2;
    assert_eq!(cdn[1], &format!("/cdn/train-00000-of-00002.parquet range {half}"));
    assert!(reqs.iter().any(|r| r
        == "/datasets/Salesforce/wikitext/resolve/0123456789abcdef0123456789abcdef01234567/wikitext-mini-raw-v1/test-00000-of-00001.parquet"));

    // Wikitext's splits become train / val / test, one document per article, in order.
    for split in [Split::Train, Split::Val, Split::Test] {
        let want: String = fx.expected[&split].iter().map(|a| format!("<|endoftext|>{a}")).collect();
        assert_eq!(decoded(&out, m, split), want, "{split}");
        assert_eq!(m.splits[split.prefix()].documents as usize, fx.expected[&split].len());
    }
    assert_eq!(m.splits["train"].documents, 11);
    assert!(m.splits["train"].shards.len() > 1);
    assert_eq!(
        m.origin.as_deref(),
        Some("Salesforce/wikitext@0123456789abcdef0123456789abcdef01234567 wikitext-mini-raw-v1")
    );
    for (s, spec) in m.sources.iter().zip(&fx.dataset.files) {
        assert_eq!(s.sha256, spec.sha256);
        assert_eq!(s.split, Some(spec.split));
        assert!(s.url.as_deref().unwrap().ends_with(&spec.file));
        assert_eq!(sha256_file(&out.join("raw").join(&spec.file)).unwrap(), spec.sha256);
    }

    // A second run finds the downloads intact and the dataset done: no request at all.
    let before = hub.requests().len();
    let again = fx.dataset.prepare(&out, &hub.endpoint(), None, config(), &quick()).unwrap();
    assert!(again.already_done);
    assert_eq!(hub.requests().len(), before);
    fs::remove_dir_all(&fx.dir).unwrap();
}

#[test]
fn corrupt_download_is_rejected_and_not_used() {
    let fx = fixture("hub-corrupt");
    let mut served = fx.files.clone();
    // The server sends other bytes than the pinned file (but claims the pinned hash).
    let entry = served.get_mut("validation-00000-of-00001.parquet").unwrap();
    let n = entry.0.len();
    entry.0[n / 2] ^= 0xff;
    let hub = Hub::start(served, &[]);
    let out = fx.dir.join("out");
    let msg = format!("{:#}", fx.dataset.prepare(&out, &hub.endpoint(), None, config(), &quick()).unwrap_err());
    assert!(msg.contains("validation-00000-of-00001.parquet") && msg.contains("sha256"), "{msg}");
    let raw = out.join("raw");
    assert!(!raw.join("validation-00000-of-00001.parquet").exists());
    assert!(!raw.join("validation-00000-of-00001.parquet.part").exists());
    assert!(!out.join("manifest.json").exists());
    fs::remove_dir_all(&fx.dir).unwrap();
}

#[test]
fn unreachable_hub_says_how_to_work_offline_and_from_dir_works() {
    let fx = fixture("hub-offline");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = fx.dir.join("out");
    let err = fx.dataset.prepare(&out, &format!("http://127.0.0.1:{port}"), None, config(), &quick()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    for part in ["cannot reach 127.0.0.1", "--from DIR", "genesis prepare --input PATH", "wikitext-mini"] {
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
    }

    // The same files fetched elsewhere, passed with --from (flat or under the config directory).
    let m = fx.dataset.prepare(&out, "http://unused.invalid", Some(&fx.dir.join("src")), config(), &quick()).unwrap();
    assert_eq!(m.manifest.splits["test"].documents, 2);
    // A wrong file in --from is refused, naming it and both hashes.
    let bad = fx.dir.join("bad");
    fs::create_dir_all(bad.join("wikitext-mini-raw-v1")).unwrap();
    for spec in &fx.dataset.files {
        fs::copy(fx.dir.join("src").join(&spec.file), bad.join("wikitext-mini-raw-v1").join(&spec.file)).unwrap();
    }
    fs::write(bad.join("wikitext-mini-raw-v1").join("test-00000-of-00001.parquet"), b"not it").unwrap();
    let msg =
        format!("{:#}", fx.dataset.prepare(&fx.dir.join("out2"), "x", Some(&bad), config(), &quick()).unwrap_err());
    assert!(
        msg.contains("test-00000-of-00001.parquet") && msg.contains(&fx.files["test-00000-of-00001.parquet"].1),
        "{msg}"
    );
    fs::remove_dir_all(&fx.dir).unwrap();
}

#[test]
fn built_in_datasets_are_pinned() {
    // Tiny Shakespeare ships in the repository (and the binary): pinned by its sha256.
    assert!(datasets::named(datasets::SHAKESPEARE).is_none());
    let shakespeare = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt");
    assert_eq!(sha256_file(&shakespeare).unwrap(), "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed");
    for name in manifest::NAMES.into_iter().filter(|n| *n != datasets::SHAKESPEARE) {
        let ds = datasets::named(name).unwrap();
        assert_eq!(ds.revision, WIKITEXT_REVISION);
        let splits: Vec<Split> = ds.files.iter().map(|f| f.split).collect();
        assert!(splits.contains(&Split::Train) && splits.contains(&Split::Val) && splits.contains(&Split::Test));
        for f in &ds.files {
            assert!(f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{name} {}", f.file);
        }
    }
    let ds = datasets::named("wikitext-103").unwrap();
    assert_eq!(
        ds.url("https://huggingface.co/", &ds.files[0]),
        format!("https://huggingface.co/datasets/Salesforce/wikitext/resolve/{WIKITEXT_REVISION}/wikitext-103-raw-v1/train-00000-of-00002.parquet")
    );
    assert_eq!(ds.files.len(), 4);
    assert!(datasets::named("openwebtext").is_none());
}
