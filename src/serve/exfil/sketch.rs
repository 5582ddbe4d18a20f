//! One agent's fixed-size state: a two-generation Bloom filter of seen
//! names and labels, a count-min sketch of leaky buckets (conservative
//! update), distinct-label counts, and a small table of domains in cooldown.

use super::ALERT_EVERY;
use crate::observe::throttle::Throttle;

/// Bloom filter bits per generation (16 KiB), hash functions, and how
/// many insertions fill a generation (then the older one is dropped):
/// about 0.5 % false "seen" at the fullest.
const SEEN_WORDS: usize = (1 << 17) / 64;
const SEEN_K: u64 = 3;
const SEEN_FILL: u32 = 8192;
/// A generation also ends after this long, so "seen" means "recently".
const SEEN_AGE_DS: u32 = 36_000;
/// Count-min sketch of leaky buckets.
const DEPTH: usize = 4;
const WIDTH: usize = 1024;
/// Domains in cooldown remembered at once; beyond it the sketch still
/// holds their buckets full, so they trip again on the next new name.
const BLOCKED: usize = 16;
/// Count-min sketch (conservative update) of distinct labels first seen per
/// domain, one per Bloom generation: 2 x 4 x 256 u16 = 4 KiB.
const LABEL_WIDTH: usize = 256;

#[derive(Clone, Copy, Default)]
pub(super) struct Cell {
    pub(super) level: f32,
    /// Deciseconds since the budgets started.
    at: u32,
}

/// One agent's state. Fixed size, no heap: this is the per-agent bound.
pub struct AgentBudget {
    seen: [[u64; SEEN_WORDS]; 2],
    current: usize,
    inserted: u32,
    generation_start: u32,
    pub(super) cells: [[Cell; WIDTH]; DEPTH],
    /// Distinct labels first seen per domain, per Bloom generation (the
    /// older generation's count is dropped with it).
    distinct: [[[u16; LABEL_WIDTH]; DEPTH]; 2],
    /// (domain hash, cooldown end in deciseconds); 0 is a free slot.
    blocked: [(u64, u32); BLOCKED],
    /// Rate limit for denial alerts.
    pub(super) alerted: Throttle,
    /// The name of the agent's last question charged: asking it again
    /// (AAAA after A) chooses no name.
    pub(super) last: u64,
}

/// Bytes of one agent's state: the memory bound per agent.
pub const AGENT_BYTES: usize = std::mem::size_of::<AgentBudget>();
// The stated bound (docs/exfiltration.md): two 16 KiB generations, 4 x 1024
// 8-byte cells, 4 KiB of distinct-label counts, a small table. Checked when compiling.
const _: () = assert!(AGENT_BYTES <= 70 * 1024);

impl AgentBudget {
    pub(super) fn new() -> Box<Self> {
        Box::new(AgentBudget {
            seen: [[0; SEEN_WORDS]; 2],
            current: 0,
            inserted: 0,
            generation_start: 0,
            cells: [[Cell::default(); WIDTH]; DEPTH],
            distinct: [[[0; LABEL_WIDTH]; DEPTH]; 2],
            blocked: [(0, 0); BLOCKED],
            alerted: Throttle::new(ALERT_EVERY),
            last: 0,
        })
    }

    pub(super) fn bits(h: u64) -> impl Iterator<Item = usize> {
        let (a, b) = (h, (h >> 32) | 1);
        (0..SEEN_K)
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % (SEEN_WORDS as u64 * 64)) as usize)
    }

    pub(super) fn seen(&self, h: u64) -> bool {
        self.seen
            .iter()
            .any(|g| Self::bits(h).all(|bit| g[bit / 64] & (1 << (bit % 64)) != 0))
    }

    pub(super) fn insert(&mut self, h: u64) {
        for bit in Self::bits(h) {
            self.seen[self.current][bit / 64] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }

    /// Starts a new generation when the current one is full or old.
    pub(super) fn rotate(&mut self, now: u32) {
        if self.generation_start == 0 {
            self.generation_start = now;
        }
        if self.inserted >= SEEN_FILL || now.saturating_sub(self.generation_start) >= SEEN_AGE_DS {
            self.current ^= 1;
            self.seen[self.current] = [0; SEEN_WORDS];
            self.distinct[self.current] = [[0; LABEL_WIDTH]; DEPTH];
            self.inserted = 0;
            self.generation_start = now;
        }
    }

    pub(super) fn column(h: u64, row: usize) -> usize {
        let (a, b) = (h, (h >> 29) | 1);
        (a.wrapping_add((row as u64).wrapping_mul(b))
            .rotate_left(row as u32 * 13)
            % WIDTH as u64) as usize
    }

    /// Distinct labels the domain has shown in both live generations:
    /// never below the truth (count-min; a label in both counts twice).
    pub(super) fn distinct(&self, h: u64) -> u32 {
        self.distinct
            .iter()
            .map(|g| {
                (0..DEPTH)
                    .map(|row| g[row][Self::column(h, row) % LABEL_WIDTH])
                    .min()
                    .unwrap_or(0) as u32
            })
            .sum()
    }

    pub(super) fn count_distinct(&mut self, h: u64, fresh: u16) {
        if fresh == 0 {
            return;
        }
        let g = &mut self.distinct[self.current];
        let target = (0..DEPTH)
            .map(|row| g[row][Self::column(h, row) % LABEL_WIDTH])
            .min()
            .unwrap_or(0)
            .saturating_add(fresh);
        for (row, counts) in g.iter_mut().enumerate() {
            let c = &mut counts[Self::column(h, row) % LABEL_WIDTH];
            *c = (*c).max(target);
        }
    }

    pub(super) fn level(cell: &Cell, now: u32, drain_per_ds: f32) -> f32 {
        (cell.level - now.saturating_sub(cell.at) as f32 * drain_per_ds).max(0.0)
    }

    /// The domain's charge: never below the truth (count-min).
    pub(super) fn estimate(&self, h: u64, now: u32, drain: f32) -> f32 {
        (0..DEPTH)
            .map(|row| Self::level(&self.cells[row][Self::column(h, row)], now, drain))
            .fold(f32::INFINITY, f32::min)
    }

    /// Conservative update: raise each cell only to the new estimate.
    pub(super) fn add(&mut self, h: u64, now: u32, drain: f32, cost: f32) -> f32 {
        let target = self.estimate(h, now, drain) + cost;
        self.fill(h, now, drain, target);
        target
    }

    pub(super) fn fill(&mut self, h: u64, now: u32, drain: f32, target: f32) {
        for row in 0..DEPTH {
            let cell = &mut self.cells[row][Self::column(h, row)];
            let level = Self::level(cell, now, drain);
            *cell = Cell {
                level: level.max(target),
                at: now,
            };
        }
    }

    pub(super) fn blocked_until(&self, h: u64, now: u32) -> Option<u32> {
        self.blocked
            .iter()
            .find(|(d, until)| *d == h && *until > now)
            .map(|(_, until)| *until)
    }

    /// Remembers a cooldown; a full table gives up the one ending soonest.
    pub(super) fn block(&mut self, h: u64, until: u32) {
        let slot = self
            .blocked
            .iter_mut()
            .min_by_key(|(d, u)| if *d == h { 0 } else { *u })
            .expect("non-empty table");
        *slot = (h, until);
    }
}
