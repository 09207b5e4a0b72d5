//! `genesis data inspect`: a prepared dataset's manifest summary and a random window of its tokens.

use super::outln;
use anyhow::{bail, Result};
use argh::FromArgs;
use genesis::data::manifest::{self, Split};

use genesis::data::shard::Shard;
use genesis::data::tokenizer::Tokenizer;
use genesis::rng::Rng;
use genesis::util::sha256_file;

use super::prepare::print_splits;

/// Look inside prepared datasets.
#[derive(FromArgs)]
#[argh(subcommand, name = "data")]
pub struct DataCmd {
    #[argh(subcommand)]
    what: DataWhat,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum DataWhat {
    Inspect(DataInspect),
}

/// Print a dataset's manifest summary and decode a random window of its tokens.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "inspect",
    example = "genesis data inspect wikitext-103\ngenesis data inspect data/shakespeare --split val --tokens 200",
    note = "The end-of-text token between documents is shown as <|endoftext|>. Checks the split's shards against the manifest (sizes, headers, token range) first, and with --verify every shard's sha256, so a damaged dataset is reported here rather than in training."
)]
pub struct DataInspect {
    /// dataset name (looked up in data/) or directory
    #[argh(positional)]
    dataset: String,
    /// split to show: train, val or test (default train)
    #[argh(option, default = "String::from(\"train\")")]
    split: String,
    /// tokens to decode (default 128)
    #[argh(option, default = "128")]
    tokens: usize,
    /// seed choosing the window (default: a different one every run)
    #[argh(option)]
    seed: Option<u64>,
    /// also check every shard of every split against the sha256 in the manifest
    #[argh(switch)]
    verify: bool,
}

pub fn run(c: DataCmd) -> Result<()> {
    match c.what {
        DataWhat::Inspect(i) => inspect(i),
    }
}

fn inspect(c: DataInspect) -> Result<()> {
    let split = match c.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        other => bail!("--split {other}: expected train, val or test"),
    };
    let dir = manifest::resolve(&c.dataset);
    let m = manifest::Manifest::load(&dir)?;
    outln!("dataset {} in {}", m.name, dir.display());
    if let Some(origin) = &m.origin {
        outln!("  origin     {origin}");
    }
    outln!(
        "  tokenizer  {} (vocab {}, end-of-text {})",
        m.tokenizer.name,
        m.tokenizer.vocab_size,
        m.tokenizer.eot_token
    );
    outln!(
        "  prepared   by Genesis {} with docs={:?} field={} val-fraction={} shard-tokens={}",
        m.genesis_version,
        m.settings.docs,
        m.settings.field,
        m.settings.val_fraction,
        m.settings.shard_tokens
    );
    outln!("  sources    {} file(s), {:.1} MB", m.sources.len(), m.source_bytes() as f64 / 1e6);
    for s in m.sources.iter().take(8) {
        outln!("    {} ({} bytes, sha256 {}…)", s.path, s.bytes, &s.sha256[..s.sha256.len().min(16)]);
    }
    if m.sources.len() > 8 {
        outln!("    … and {} more", m.sources.len() - 8);
    }
    print_splits(&m)?;
    if c.verify {
        for (name, s) in &m.splits {
            for shard in &s.shards {
                let actual = sha256_file(&dir.join(&shard.file))?;
                if actual != shard.sha256 {
                    bail!(
                        "{}: sha256 {actual}, but the manifest records {}; the {name} split is damaged: prepare the dataset again with --force",
                        dir.join(&shard.file).display(),
                        shard.sha256
                    );
                }
            }
        }
        outln!("  verified   every shard's sha256 matches the manifest");
    }
    let paths = m.shard_paths(&dir, split)?;
    let shards = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>>>()?;
    let total: usize = shards.iter().map(Shard::len).sum();
    let seed = c.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    // A uniformly random token of the split, then its shard.
    let mut at = rng.below(total as u64) as usize;
    let mut k = 0;
    while at >= shards[k].len() {
        at -= shards[k].len();
        k += 1;
    }
    let shard = &shards[k];
    let start = at.min(shard.len().saturating_sub(c.tokens));
    let window: Vec<u32> =
        shard.tokens()[start..(start + c.tokens).min(shard.len())].iter().map(|&t| t as u32).collect();
    let tok = Tokenizer::gpt2()?;
    let name = shard.path().file_name().and_then(|n| n.to_str()).unwrap_or("?");
    outln!("\n{} tokens of {split} from {name} at token {start} (--seed {seed}):\n", window.len());
    // The end-of-text token decodes as "<|endoftext|>".
    outln!("{}", tok.decode(&window));
    Ok(())
}
