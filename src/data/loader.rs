//! Batches of `(inputs, targets)` from the token shards of one split of a prepared dataset.
//!
//! A row is a window of `seq + 1` consecutive tokens from one shard: `inputs` gets the first `seq`,
//! `targets` the last `seq`, so `targets[i]` is the token that follows `inputs[i]`. Windows ignore
//! document boundaries (documents are separated by end-of-text inside the stream).
//!
//! - [`Split::Train`] goes through the data in shuffled epochs. Epoch `e` visits the shards in an
//!   order drawn from `(seed, e)`; within a shard it starts the windows at a random offset below
//!   `seq` (so epochs see different cuts) and visits all `⌊(n - 1 - offset) / seq⌋` non-overlapping
//!   windows in an order drawn from `(seed, e, shard)`. Every token is seen about once per epoch.
//!   [`LoaderState`] (epoch, shard, position, RNG) pins the position exactly: a checkpoint saves it
//!   and [`DataLoader::restore`] continues with the identical batch sequence.
//! - [`Split::Val`] and [`Split::Test`] read non-overlapping windows (stride `seq`) in file order
//!   from the start of the first shard, wrapping around at the end, so every evaluation sees the
//!   same tokens.
//!
//! Only directories with a complete `manifest.json` are opened (see [`manifest`](super::manifest)).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::manifest::{Manifest, Split};
use crate::data::shard::Shard;
use crate::rng::Rng;

/// Where a train loader is: enough to continue with the identical batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Index into this epoch's shard order.
    pub shard: usize,
    /// Windows of the current shard already handed out.
    pub position: u64,
    /// The generator that drew the current shard's offset and window order.
    pub rng: [u64; 4],
}

/// Batches over all shards of one split. See the module docs.
#[derive(Debug)]
pub struct DataLoader {
    dir: PathBuf,
    split: Split,
    shards: Vec<Shard>,
    batch: usize,
    seq: usize,
    seed: u64,
    // Train: the current epoch's shard order and the current shard's window starts, in visit order.
    state: LoaderState,
    order: Vec<usize>,
    starts: Vec<u64>,
    // Val/test: sequential position.
    seq_shard: usize,
    seq_pos: usize,
    /// Non-overlapping windows in one sequential pass over all shards.
    rows_per_pass: usize,
}

impl DataLoader {
    /// Opens the `split` shards of the prepared dataset in `dir` (checking them against its
    /// manifest and validating each) for batches of `batch` rows of `seq` tokens.
    pub fn open(dir: &Path, split: Split, batch: usize, seq: usize, seed: u64) -> Result<Self> {
        if batch == 0 || seq == 0 {
            bail!("batch size and sequence length must be positive (got batch {batch}, seq {seq})");
        }
        let manifest = Manifest::load(dir)?;
        let paths = manifest.shard_paths(dir, split)?;
        let shards = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>>>()?;
        let rows_per_pass = shards.iter().map(|s| s.len().saturating_sub(1) / seq).sum();
        if rows_per_pass == 0 {
            let total: usize = shards.iter().map(Shard::len).sum();
            let longest = shards.iter().map(Shard::len).max().unwrap_or(0);
            bail!(
                "the {} {split} shard(s) in {} hold {total} tokens in total and the longest has {longest}, but a \
                 sequence length of {seq} needs {} consecutive tokens in one shard; prepare more text or use a \
                 shorter sequence length",
                shards.len(),
                dir.display(),
                seq + 1
            );
        }
        let state = LoaderState { epoch: 0, shard: 0, position: 0, rng: [0; 4] };
        let mut loader = DataLoader {
            dir: dir.to_path_buf(),
            split,
            shards,
            batch,
            seq,
            seed,
            state,
            order: Vec::new(),
            starts: Vec::new(),
            seq_shard: 0,
            seq_pos: 0,
            rows_per_pass,
        };
        if split == Split::Train {
            loader.begin_epoch(0);
        }
        Ok(loader)
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
                Split::Train => self.shuffled_window(),
                Split::Val | Split::Test => self.sequential_window(),
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

    /// The generator for epoch `epoch`'s shard order, or for one shard's windows in that epoch.
    fn stream(&self, epoch: u64, shard: Option<usize>) -> Rng {
        let salt = shard.map_or(0, |s| s as u64 + 1);
        Rng::new(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The order epoch `epoch` visits the shards in.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        shuffle(&mut order, &mut self.stream(epoch, None));
        order
    }

    fn begin_epoch(&mut self, epoch: u64) {
        self.order = self.epoch_order(epoch);
        let first = self.order[0];
        self.state = LoaderState { epoch, shard: 0, position: 0, rng: self.stream(epoch, Some(first)).state() };
        self.fill_starts();
    }

    /// Draws the current shard's offset and window order from `state.rng`.
    fn fill_starts(&mut self) {
        let mut rng = Rng::from_state(self.state.rng);
        let n = self.shards[self.order[self.state.shard]].len();
        let t = self.seq;
        self.starts.clear();
        if n < t + 1 {
            return;
        }
        // The offset may not cost a window: keep it below the slack at the end of the shard.
        let slack = (n - 1) % t;
        let offset = rng.below(slack as u64 + 1);
        let count = (n as u64 - 1 - offset) / t as u64;
        self.starts.extend((0..count).map(|j| offset + j * t as u64));
        shuffle(&mut self.starts, &mut rng);
    }

    fn shuffled_window(&mut self) -> (usize, usize) {
        while self.state.position as usize >= self.starts.len() {
            if self.state.shard + 1 < self.order.len() {
                self.state.shard += 1;
                self.state.position = 0;
                self.state.rng = self.stream(self.state.epoch, Some(self.order[self.state.shard])).state();
                self.fill_starts();
            } else {
                self.begin_epoch(self.state.epoch + 1);
            }
        }
        let start = self.starts[self.state.position as usize];
        self.state.position += 1;
        (self.order[self.state.shard], start as usize)
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

    /// The train position, to save in a checkpoint.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from a [`state`](Self::state) saved by a loader over the same data with the same
    /// seed, batch and sequence length; the following batches are identical to the saved run's.
    pub fn restore(&mut self, state: LoaderState) -> Result<()> {
        if self.split != Split::Train {
            bail!("only the train loader has a position to restore");
        }
        let order = self.epoch_order(state.epoch);
        if state.shard >= order.len() {
            bail!(
                "the saved data position (epoch {}, shard {} of the epoch) does not fit the {} shards in {}; \
                 was the dataset prepared again?",
                state.epoch,
                state.shard,
                order.len(),
                self.dir.display()
            );
        }
        self.order = order;
        self.state = state;
        self.fill_starts();
        if state.position as usize > self.starts.len() {
            bail!(
                "the saved data position ({} windows into a shard) is past the shard's {} windows in {}; \
                 was the dataset prepared again or the sequence length changed?",
                state.position,
                self.starts.len(),
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Completed epochs plus the fraction of the current one.
    pub fn epoch_progress(&self) -> f64 {
        let done: usize = self.order[..self.state.shard].iter().map(|&s| self.shards[s].len()).sum();
        let here = (self.state.position as usize * self.seq).min(self.shards[self.order[self.state.shard]].len());
        self.state.epoch as f64 + (done + here) as f64 / self.total_tokens().max(1) as f64
    }

    /// How many full batches one sequential pass holds (the validation batches per evaluation).
    pub fn num_val_batches(&self) -> usize {
        self.rows_per_pass / self.batch
    }

    /// Back to the start: the sequential position returns to the first shard's first token and the
    /// train position to the start of epoch 0.
    pub fn reset(&mut self) {
        self.seq_shard = 0;
        self.seq_pos = 0;
        if self.split == Split::Train {
            self.begin_epoch(0);
        }
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

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}
