//! Batches of `(inputs, targets)` from the token shards of one split.
//!
//! A row is a window of `seq + 1` consecutive tokens from one shard: `inputs` gets the first `seq`,
//! `targets` the last `seq`, so `targets[i]` is the token that follows `inputs[i]`.
//!
//! - [`Split::Train`]: every row is an independent, uniformly random window over all windows of
//!   all shards (a shard is picked with probability proportional to its windows), drawn from a
//!   seeded [`Rng`]: the same seed gives the same batches on every machine.
//! - [`Split::Val`]: non-overlapping windows (stride `seq`) in file order from the start of the
//!   first shard, wrapping around at the end, so every evaluation sees the same tokens.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::data::shard::{list_shards, Shard};
use crate::rng::Rng;

/// Which shards to read: `train_*.bin` or `val_*.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// The shard file prefix: `"train"` or `"val"`.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// Batches over all shards of one split in a directory. See the module docs.
#[derive(Debug)]
pub struct DataLoader {
    dir: PathBuf,
    split: Split,
    shards: Vec<Shard>,
    batch: usize,
    seq: usize,
    seed: u64,
    rng: Rng,
    /// `window_ends[i]`: number of windows in shards `0..=i` (train sampling).
    window_ends: Vec<u64>,
    /// Sequential position: shard index and start of the next window.
    seq_shard: usize,
    seq_pos: usize,
    /// Non-overlapping windows in one sequential pass over all shards.
    rows_per_pass: usize,
}

impl DataLoader {
    /// Opens every `{split}_*.bin` shard in `dir` (validating each) for batches of `batch` rows of
    /// `seq` tokens. Train batches are drawn from `Rng::new(seed)`.
    pub fn open(dir: &Path, split: Split, batch: usize, seq: usize, seed: u64) -> Result<Self> {
        if batch == 0 || seq == 0 {
            bail!("batch size and sequence length must be positive (got batch {batch}, seq {seq})");
        }
        let prepare_hint = format!("run `genesis prepare --input FILE... --out {}` first", dir.display());
        if !dir.exists() {
            bail!("data directory {} does not exist; {prepare_hint}", dir.display());
        }
        let paths = list_shards(dir, split.prefix())?;
        if paths.is_empty() {
            bail!("no {}_*.bin shards in {}; {prepare_hint}", split.prefix(), dir.display());
        }
        let shards = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>>>()?;

        let need = seq + 1;
        let mut window_ends = Vec::with_capacity(shards.len());
        let mut windows = 0u64;
        let mut rows_per_pass = 0;
        for s in &shards {
            if s.len() >= need {
                windows += (s.len() - seq) as u64;
                rows_per_pass += (s.len() - 1) / seq;
            }
            window_ends.push(windows);
        }
        if windows == 0 {
            let total: usize = shards.iter().map(Shard::len).sum();
            let longest = shards.iter().map(Shard::len).max().unwrap_or(0);
            bail!(
                "the {} {} shard(s) in {} hold {total} tokens in total and the longest has \
                 {longest}, but a sequence length of {seq} needs {need} consecutive tokens in one \
                 shard; prepare more text or use a shorter sequence length",
                shards.len(),
                split.prefix(),
                dir.display()
            );
        }
        Ok(DataLoader {
            dir: dir.to_path_buf(),
            split,
            shards,
            batch,
            seq,
            seed,
            rng: Rng::new(seed),
            window_ends,
            seq_shard: 0,
            seq_pos: 0,
            rows_per_pass,
        })
    }

    /// Fills `inputs` and `targets` (each `batch * seq` long, row-major) with the next batch.
    ///
    /// # Panics
    /// If either slice has the wrong length.
    pub fn next_batch(&mut self, inputs: &mut [u32], targets: &mut [u32]) {
        let (b, t) = (self.batch, self.seq);
        assert_eq!(inputs.len(), b * t, "inputs must hold batch * seq = {} tokens", b * t);
        assert_eq!(targets.len(), b * t, "targets must hold batch * seq = {} tokens", b * t);
        for row in 0..b {
            let (shard, start) = match self.split {
                Split::Train => self.random_window(),
                Split::Val => self.sequential_window(),
            };
            let window = &self.shards[shard].tokens()[start..start + t + 1];
            let inp = &mut inputs[row * t..][..t];
            let tgt = &mut targets[row * t..][..t];
            for ((x, y), pair) in inp.iter_mut().zip(tgt.iter_mut()).zip(window.windows(2)) {
                *x = pair[0] as u32;
                *y = pair[1] as u32;
            }
        }
    }

    /// A uniformly random window over all shards: one RNG draw per row.
    fn random_window(&mut self) -> (usize, usize) {
        let total = *self.window_ends.last().expect("at least one shard");
        let r = self.rng.below(total);
        // First shard whose cumulative window count exceeds r.
        let shard = self.window_ends.partition_point(|&end| end <= r);
        let before = if shard == 0 { 0 } else { self.window_ends[shard - 1] };
        (shard, (r - before) as usize)
    }

    /// The next non-overlapping window in file order, wrapping to the first shard at the end.
    fn sequential_window(&mut self) -> (usize, usize) {
        loop {
            if self.seq_pos + self.seq < self.shards[self.seq_shard].len() {
                let start = self.seq_pos;
                self.seq_pos += self.seq;
                return (self.seq_shard, start);
            }
            self.seq_shard = (self.seq_shard + 1) % self.shards.len();
            self.seq_pos = 0;
        }
    }

    /// How many full batches one sequential pass holds (the validation batches per evaluation).
    pub fn num_val_batches(&self) -> usize {
        self.rows_per_pass / self.batch
    }

    /// Back to the start: the sequential position returns to the first shard's first token and the
    /// random stream restarts from the seed.
    pub fn reset(&mut self) {
        self.seq_shard = 0;
        self.seq_pos = 0;
        self.rng = Rng::new(self.seed);
    }

    /// State of the train sampling RNG, for checkpoints.
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    /// Restores the train sampling RNG saved with [`rng_state`](Self::rng_state).
    pub fn set_rng_state(&mut self, state: [u64; 4]) {
        self.rng = Rng::from_state(state);
    }

    /// Tokens in all shards of this split.
    pub fn total_tokens(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn seq(&self) -> usize {
        self.seq
    }

    pub fn split(&self) -> Split {
        self.split
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
