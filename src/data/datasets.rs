//! Datasets Genesis knows by name: `genesis prepare wikitext-103` downloads, checks and prepares.
//!
//! Both wikitext configurations come from the Hugging Face dataset repository
//! `Salesforce/wikitext`, pinned to one revision, as parquet files whose rows are the lines of the
//! raw text (`" = Title = \n"`, `""` for blank lines). Every file's sha256 is pinned here and
//! checked after download (and against the `X-Linked-Etag` Hugging Face sends). Wikitext's own
//! splits become the train / val / test shards; the rows are regrouped into articles (see
//! [`Docs::Wikitext`]), one document each.
//!
//! The downloads are kept in `<dataset dir>/raw/` so a re-run never fetches twice. Without network,
//! fetch the files elsewhere and pass their directory with `--from`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::data::download::{download, is_unreachable, DownloadOptions, RemoteFile};
use crate::data::manifest::Split;
use crate::data::prepare::{prepare, Input, PrepareConfig, PrepareReport};
use crate::data::source::{Docs, Format, SourceFile};
use crate::util::sha256_file;

/// The built-in dataset that needs no network: tiny Shakespeare (public domain, 1.1 MB), shipped
/// in `data/tinyshakespeare.txt` and inside the binary.
pub const SHAKESPEARE: &str = "shakespeare";
const SHAKESPEARE_TEXT: &str = include_str!("../../data/tinyshakespeare.txt");

/// Prepares tiny Shakespeare into `out`: the text is written to `out/raw/tinyshakespeare.txt` and
/// prepared as one document (the whole play, so a model learns to keep going) whose last
/// `cfg.val_fraction` is held out as the val split.
pub fn prepare_shakespeare(out: &Path, mut cfg: PrepareConfig) -> Result<PrepareReport> {
    let raw = out.join("raw");
    std::fs::create_dir_all(&raw).with_context(|| format!("cannot create {}", raw.display()))?;
    let path = raw.join("tinyshakespeare.txt");
    if std::fs::read(&path).ok().as_deref() != Some(SHAKESPEARE_TEXT.as_bytes()) {
        crate::util::write_atomic(&path, SHAKESPEARE_TEXT.as_bytes())?;
    }
    cfg.source.docs = Docs::Whole;
    cfg.origin = Some("tiny Shakespeare (public domain), built into Genesis".to_string());
    prepare(&[Input::local(SourceFile { path, format: Format::Text })], out, &cfg)
}

/// The Hugging Face revision (commit) every wikitext file is fetched at.
pub const WIKITEXT_REVISION: &str = "b08601e04326c79dfdd32d625aee71d232d685c3";
const WIKITEXT_REPO: &str = "Salesforce/wikitext";
// Validation and test are the same articles in both configurations (and the same files).
const VAL_SHA256: &str = "204929b7ff9d6184953f867dedb860e40aa69c078fc1e54b3baaa8fb28511c4c";
const TEST_SHA256: &str = "5f1bea067869d04849c0f975a2b29c4ff47d867f484f5010ea5e861eab246d91";

/// One file of a named dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub split: Split,
    /// Path inside the repository's configuration directory, e.g. `train-00000-of-00002.parquet`.
    pub file: String,
    pub sha256: String,
}

/// A dataset fetched from a Hugging Face dataset repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDataset {
    pub name: String,
    /// `owner/name` on the hub.
    pub repo: String,
    pub revision: String,
    /// The configuration directory inside the repository.
    pub config: String,
    pub files: Vec<RemoteSpec>,
    /// Roughly how much is downloaded, for messages.
    pub download_mb: u32,
}

/// The built-in dataset called `name`.
pub fn named(name: &str) -> Option<NamedDataset> {
    let spec = |split, file: &str, sha256: &str| RemoteSpec { split, file: file.into(), sha256: sha256.into() };
    let (config, train, download_mb) = match name {
        "wikitext-103" => (
            "wikitext-103-raw-v1",
            vec![
                spec(
                    Split::Train,
                    "train-00000-of-00002.parquet",
                    "74da360f23826045b3e6ac6375411fdb15f003030aa74f2596ed08b857cb9212",
                ),
                spec(
                    Split::Train,
                    "train-00001-of-00002.parquet",
                    "ba090ac30dbf5461e8dcbdd1a1b8e6f3cf9c2c756d64f0c1220450acd514f720",
                ),
            ],
            316,
        ),
        "wikitext-2" => (
            "wikitext-2-raw-v1",
            vec![spec(
                Split::Train,
                "train-00000-of-00001.parquet",
                "e83889baabc497075506f91975be5fac0d45c5290b6b20582c8cd1e853d0c9f7",
            )],
            8,
        ),
        _ => return None,
    };
    let mut files = train;
    files.push(spec(Split::Val, "validation-00000-of-00001.parquet", VAL_SHA256));
    files.push(spec(Split::Test, "test-00000-of-00001.parquet", TEST_SHA256));
    Some(NamedDataset {
        name: name.into(),
        repo: WIKITEXT_REPO.into(),
        revision: WIKITEXT_REVISION.into(),
        config: config.into(),
        files,
        download_mb,
    })
}

/// The hub to download from: `$HF_ENDPOINT` (a mirror) or `https://huggingface.co`.
pub fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
}

impl NamedDataset {
    /// The `/resolve/` URL of one file at the pinned revision.
    pub fn url(&self, endpoint: &str, spec: &RemoteSpec) -> String {
        format!(
            "{}/datasets/{}/resolve/{}/{}/{}",
            endpoint.trim_end_matches('/'),
            self.repo,
            self.revision,
            self.config,
            spec.file
        )
    }

    /// `repo@revision config`, recorded in the manifest.
    pub fn origin(&self) -> String {
        format!("{}@{} {}", self.repo, self.revision, self.config)
    }

    /// Makes every file available locally and checked: from `from` when given (the file directly
    /// in it or under `<config>/`), else downloaded into `raw_dir` (skipped when already there
    /// and intact).
    pub fn fetch(
        &self,
        endpoint: &str,
        raw_dir: &Path,
        from: Option<&Path>,
        opts: &DownloadOptions,
    ) -> Result<Vec<Input>> {
        let mut inputs = Vec::with_capacity(self.files.len());
        for spec in &self.files {
            let url = self.url(endpoint, spec);
            let path = match from {
                Some(dir) => self.local_copy(dir, spec)?,
                None => {
                    let dest = raw_dir.join(&spec.file);
                    let remote = RemoteFile { url: url.clone(), sha256: Some(spec.sha256.clone()), size: None };
                    match download(&remote, &dest, opts) {
                        Ok(d) => d.path,
                        Err(e) if is_unreachable(&e) => bail!(
                            "{e}: no network? Fetch the {} files of {} (revision {}) elsewhere and run \
                             `genesis prepare {} --from DIR`, or prepare local text with `genesis prepare --input PATH`",
                            self.config,
                            self.repo,
                            &self.revision[..7],
                            self.name
                        ),
                        Err(e) => return Err(e.context(format!("downloading {} for {}", spec.file, self.name))),
                    }
                }
            };
            inputs.push(Input {
                file: SourceFile { path, format: Format::Parquet },
                split: Some(spec.split),
                url: Some(url),
                sha256: Some(spec.sha256.clone()),
            });
        }
        Ok(inputs)
    }

    fn local_copy(&self, dir: &Path, spec: &RemoteSpec) -> Result<PathBuf> {
        let candidates = [dir.join(&spec.file), dir.join(&self.config).join(&spec.file)];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            bail!(
                "--from {}: {} is missing (looked for {} and {})",
                dir.display(),
                spec.file,
                candidates[0].display(),
                candidates[1].display()
            );
        };
        let actual = sha256_file(path)?;
        if actual != spec.sha256 {
            bail!(
                "{} has sha256 {actual}, but {} at revision {} has {}; it is a different or damaged file",
                path.display(),
                spec.file,
                &self.revision[..7],
                spec.sha256
            );
        }
        Ok(path.clone())
    }

    /// Fetches and prepares the dataset into `out` (see [`prepare`]).
    pub fn prepare(
        &self,
        out: &Path,
        endpoint: &str,
        from: Option<&Path>,
        mut cfg: PrepareConfig,
        opts: &DownloadOptions,
    ) -> Result<PrepareReport> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let inputs = self.fetch(endpoint, &out.join("raw"), from, opts)?;
        cfg.source.docs = Docs::Wikitext;
        cfg.source.field = "text".into();
        cfg.val_fraction = 0.0;
        cfg.origin = Some(self.origin());
        prepare(&inputs, out, &cfg)
    }
}
