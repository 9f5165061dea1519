//! GPUs grouped in nodes and the time of the dispatch and combine transfers of an
//! expert-parallel layer (docs/cost-model.md#dispatch): a token's hidden state goes from the GPU that holds it
//! to the GPUs that serve its experts (dispatch) and their outputs come back (combine),
//! over three link classes: the same GPU (free), NVLink inside a node, RDMA between nodes.
//!
//! The model of one transfer: every link class that carries data costs its latency (the
//! largest one counts) and the busiest GPU's bytes on each class go at that class's
//! bandwidth, the classes in parallel:
//!
//! ```text
//! time = max over used classes of latency + max over classes of bytes(class) / bandwidth(class)
//! ```
//!
//! Tokens start on every GPU alike (data-parallel attention), so a token's copies are
//! counted as expectations over its starting GPU, and a batch's copies are spread over
//! min(tokens, GPUs) senders. Two ways of sending, as DeepEP's two kernel families do:
//! - per node (`per_pair = false`, DeepEP's normal kernels, the ones group-limited routing
//!   was designed for): a token crosses RDMA once per remote node that serves any of its
//!   experts and NVLink once inside each node it reaches, so copies depend on the number of
//!   nodes a token's experts are served from (the placement and the replica choice decide it);
//! - per pair (`per_pair = true`, DeepEP's low-latency kernels): one copy per (token, expert),
//!   which does not depend on the placement.
//!
//! Presets come from DeepEP's published figures (deepseek-ai/DeepEP, docs/legacy.md, the V1
//! "Performance" section; H800, about 160 GB/s NVLink, CX7 InfiniBand 400 Gb/s RDMA cards);
//! `PUBLISHED_*` hold them and the tests set the model beside them.

use crate::util::error::{MoeError, Result};
use crate::util::limits::check_num_gpus;

/// Link classes, the index into a `Transfer`'s latencies and bandwidths.
pub const SAME_GPU: usize = 0;
pub const NVLINK: usize = 1;
pub const RDMA: usize = 2;

/// One direction of the exchange (dispatch or combine).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transfer {
    /// Bytes sent per token copy (hidden size x bytes per element, plus scales for FP8).
    pub bytes_per_token: f64,
    /// Latency per link class, microseconds.
    pub latency_us: [f64; 3],
    /// Bandwidth per link class, GB/s (1e9 bytes/s); infinite for the same GPU.
    pub bandwidth_gb_s: [f64; 3],
}

impl Transfer {
    /// Time (us) of a transfer in which the busiest GPU sends `copies[c]` token copies on
    /// link class c.
    pub fn time_us(&self, copies: [f64; 3]) -> f64 {
        let mut latency: f64 = 0.0;
        let mut busiest: f64 = 0.0;
        for (c, &n) in copies.iter().enumerate() {
            if n > 0.0 {
                latency = latency.max(self.latency_us[c]);
                // GB/s = 1e3 bytes per microsecond.
                busiest = busiest.max(n * self.bytes_per_token / (self.bandwidth_gb_s[c] * 1e3));
            }
        }
        latency + busiest
    }

    fn check(&self, what: &str) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(self.bytes_per_token) || !self.latency_us.iter().all(|&x| ok(x)) {
            return Err(MoeError::value(format!(
                "{what}: bytes_per_token and latencies must be finite and non-negative"
            )));
        }
        if !self.bandwidth_gb_s.iter().all(|&b| b > 0.0) {
            return Err(MoeError::value(format!(
                "{what}: bandwidths must be positive (inf for a free link)"
            )));
        }
        Ok(())
    }
}

/// GPUs in nodes of `gpus_per_node` (GPU g is on node g / gpus_per_node) and the two
/// transfers of a layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Topology {
    pub gpus_per_node: usize,
    /// One copy per (token, expert) (low-latency kernels) instead of one per node reached.
    pub per_pair: bool,
    pub dispatch: Transfer,
    pub combine: Transfer,
}

/// DeepSeek-V3's hidden size and the bytes of one token: FP8 with one float32 scale per
/// 128 values for dispatch (7,392 bytes), BF16 for combine (14,336 bytes), as DeepEP's
/// figures were measured.
pub const V3_HIDDEN: usize = 7168;
pub const V3_DISPATCH_BYTES: f64 = (V3_HIDDEN + V3_HIDDEN / 128 * 4) as f64;
pub const V3_COMBINE_BYTES: f64 = (V3_HIDDEN * 2) as f64;

/// DeepEP V1 low-latency kernels on H800 + CX7 400 Gb/s (docs/legacy.md): 128 tokens per
/// rank, top-8, hidden 7168, FP8 dispatch, BF16 combine. (EP size, dispatch us, combine us).
pub const PUBLISHED_LOW_LATENCY_US: [(usize, f64, f64); 6] = [
    (8, 77.0, 114.0),
    (16, 118.0, 195.0),
    (32, 155.0, 273.0),
    (64, 173.0, 314.0),
    (128, 192.0, 369.0),
    (256, 194.0, 360.0),
];

/// DeepEP V1 normal kernels on H800 + CX7 400 Gb/s (docs/legacy.md): 4096 tokens per rank,
/// top-4 groups, top-8 experts, hidden 7168, FP8 dispatch, BF16 combine. (EP size,
/// dispatch bottleneck GB/s, combine bottleneck GB/s); NVLink at EP 8, RDMA above.
pub const PUBLISHED_NORMAL_GB_S: [(usize, f64, f64); 4] = [
    (8, 153.0, 158.0),
    (16, 43.0, 43.0),
    (32, 58.0, 57.0),
    (64, 51.0, 50.0),
];

impl Topology {
    pub fn check(&self, num_gpus: usize) -> Result<()> {
        check_num_gpus(num_gpus)?;
        if self.gpus_per_node == 0 || num_gpus % self.gpus_per_node != 0 {
            return Err(MoeError::value(format!(
                "gpus_per_node = {} must divide the {num_gpus} GPUs",
                self.gpus_per_node
            )));
        }
        self.dispatch.check("dispatch")?;
        self.combine.check("combine")
    }

    pub fn node_of(&self, gpu: usize) -> usize {
        gpu / self.gpus_per_node
    }

    /// H800 nodes of 8 GPUs with 400 Gb/s InfiniBand, DeepEP's low-latency kernels (one
    /// copy per token and expert, pure RDMA between nodes). Latencies and bandwidths fitted
    /// to the six published EP sizes (least largest relative error; see the tests).
    pub fn h800_low_latency() -> Self {
        Topology {
            gpus_per_node: 8,
            per_pair: true,
            dispatch: Transfer {
                bytes_per_token: V3_DISPATCH_BYTES,
                latency_us: [0.0, 33.0, 33.0],
                bandwidth_gb_s: [f64::INFINITY, 150.0, 46.0],
            },
            combine: Transfer {
                bytes_per_token: V3_COMBINE_BYTES,
                latency_us: [0.0, 8.0, 8.0],
                bandwidth_gb_s: [f64::INFINITY, 120.0, 40.0],
            },
        }
    }

    /// H800 nodes of 8 GPUs with 400 Gb/s InfiniBand, DeepEP's normal kernels (one RDMA copy
    /// per remote node reached, forwarded over NVLink). Bandwidths: the value of least
    /// largest relative error over the published sizes (the published RDMA figures are not
    /// monotone in the EP size: 43, 58, 51 GB/s); latencies as the low-latency fit.
    pub fn h800_normal() -> Self {
        Topology {
            gpus_per_node: 8,
            per_pair: false,
            dispatch: Transfer {
                bytes_per_token: V3_DISPATCH_BYTES,
                latency_us: [0.0, 33.0, 33.0],
                bandwidth_gb_s: [f64::INFINITY, 156.0, 51.5],
            },
            combine: Transfer {
                bytes_per_token: V3_COMBINE_BYTES,
                latency_us: [0.0, 8.0, 8.0],
                bandwidth_gb_s: [f64::INFINITY, 157.0, 49.3],
            },
        }
    }

    /// Expected copies per link class sent for one token whose `k` experts are served
    /// from `nodes` distinct nodes, out of `num_nodes` (the token starts on any GPU alike).
    pub fn token_copies(&self, k: usize, nodes: usize, num_nodes: usize) -> [f64; 3] {
        let n = num_nodes as f64;
        let local = (self.gpus_per_node as f64 - 1.0) / self.gpus_per_node as f64;
        if self.per_pair {
            // Each pair: another node with probability (N-1)/N, else another GPU of the
            // node with probability (gpn-1)/gpn.
            let k = k as f64;
            [0.0, k / n * local, k * (n - 1.0) / n]
        } else {
            // Each node reached is remote unless it is the token's own (probability 1/N),
            // and inside it the copy moves over NVLink unless it lands on its GPU.
            let m = nodes as f64;
            [0.0, m * local, m * (n - 1.0) / n]
        }
    }

    /// Dispatch + combine time (us) of a batch of `tokens` tokens with `k` experts each
    /// whose node counts sum to `node_sum`, on `num_gpus` GPUs.
    pub fn batch_comm_us(&self, tokens: usize, k: usize, node_sum: usize, num_gpus: usize) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let num_nodes = num_gpus / self.gpus_per_node;
        // token_copies is linear in the node count: the batch's total is one call with
        // the node sum, shared by min(tokens, GPUs) senders.
        let copies = self.token_copies(k * tokens, node_sum, num_nodes);
        let senders = tokens.min(num_gpus) as f64;
        let per_gpu = copies.map(|c| c / senders);
        self.dispatch.time_us(per_gpu) + self.combine.time_us(per_gpu)
    }

    /// Dispatch + combine time (us) of one token whose `k` experts are served from
    /// `nodes` nodes.
    pub fn token_comm_us(&self, k: usize, nodes: usize, num_gpus: usize) -> f64 {
        self.batch_comm_us(1, k, nodes, num_gpus)
    }

    /// A topology without communication cost (every link free): costs under it are the
    /// compute-only ones.
    pub fn free(gpus_per_node: usize) -> Self {
        let free = Transfer {
            bytes_per_token: 0.0,
            latency_us: [0.0; 3],
            bandwidth_gb_s: [f64::INFINITY; 3],
        };
        Topology {
            gpus_per_node,
            per_pair: false,
            dispatch: free,
            combine: free,
        }
    }
}

/// Expected distinct nodes a DeepSeek-V3 token reaches on `num_nodes` nodes when its 8
/// groups of experts are spread evenly over the nodes and it picks 4 groups uniformly (and
/// at least one expert in each): N (1 - C(8 - 8/N, 4) / C(8, 4)).
pub fn v3_expected_nodes(num_nodes: usize) -> f64 {
    let choose = |n: usize, r: usize| -> f64 {
        if r > n {
            return 0.0;
        }
        (0..r).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    };
    let per_node = 8 / num_nodes.min(8);
    let n = num_nodes.min(8) as f64;
    n * (1.0 - choose(8 - per_node, 4) / choose(8, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(model: f64, published: f64) -> f64 {
        (model - published).abs() / published
    }

    #[test]
    fn low_latency_preset_reproduces_deepep_within_15_percent() {
        let t = Topology::h800_low_latency();
        println!("EP  dispatch published/model (us)  combine published/model (us)");
        for (ep, disp, comb) in PUBLISHED_LOW_LATENCY_US {
            // 128 tokens on each of the EP ranks, top-8, experts spread uniformly.
            let per_gpu = t
                .token_copies(8 * 128 * ep, 0, ep / 8)
                .map(|c| c / ep as f64);
            let (d, c) = (t.dispatch.time_us(per_gpu), t.combine.time_us(per_gpu));
            println!("{ep:>3}  {disp:>6.0} / {d:>6.1}  {comb:>6.0} / {c:>6.1}");
            assert!(
                rel(d, disp) < 0.15 && rel(c, comb) < 0.15,
                "EP {ep}: {d} {c}"
            );
            // The same through the batch entry point.
            let both = t.batch_comm_us(128 * ep, 8, 0, ep);
            assert!((both - d - c).abs() < 1e-9);
        }
    }

    #[test]
    fn normal_preset_reproduces_deepep_bandwidths_within_15_percent() {
        let t = Topology::h800_normal();
        println!("EP  dispatch published/model (GB/s)  combine published/model (GB/s)");
        for (ep, disp, comb) in PUBLISHED_NORMAL_GB_S {
            let nodes = ep / 8;
            // 4096 tokens per rank reaching the expected number of nodes; inside one node
            // the kernel sends a token to each of its GPUs (at most 8).
            let m = if nodes == 1 {
                8.0
            } else {
                v3_expected_nodes(nodes)
            };
            let tokens = 4096.0 * ep as f64;
            let copies = t
                .token_copies(1, 1, nodes)
                .map(|c| c * m * tokens / ep as f64);
            let class = if nodes == 1 { NVLINK } else { RDMA };
            let bw =
                |tr: &Transfer| copies[class] * tr.bytes_per_token / (tr.time_us(copies) * 1e3);
            let (d, c) = (bw(&t.dispatch), bw(&t.combine));
            println!("{ep:>3}  {disp:>6.0} / {d:>6.1}  {comb:>6.0} / {c:>6.1}");
            assert!(
                rel(d, disp) < 0.15 && rel(c, comb) < 0.15,
                "EP {ep}: {d} {c}"
            );
        }
    }

    #[test]
    fn copies_follow_nodes_only_for_per_node_kernels() {
        let normal = Topology::h800_normal();
        let ll = Topology::h800_low_latency();
        // 4 nodes of 8: one node reached is remote with probability 3/4.
        assert_eq!(normal.token_copies(8, 1, 4), [0.0, 7.0 / 8.0, 0.75]);
        assert_eq!(normal.token_copies(8, 3, 4), [0.0, 21.0 / 8.0, 2.25]);
        assert_eq!(ll.token_copies(8, 1, 4), ll.token_copies(8, 3, 4));
        assert!(normal.token_comm_us(8, 1, 32) < normal.token_comm_us(8, 2, 32));
        assert_eq!(Topology::free(8).token_comm_us(8, 4, 32), 0.0);
        // One node, every link NVLink: no RDMA copy, NVLink latency only.
        let one = normal.token_copies(8, 1, 1);
        assert_eq!(one[RDMA], 0.0);
    }

    #[test]
    fn expected_nodes_of_v3_routing() {
        assert!((v3_expected_nodes(1) - 1.0).abs() < 1e-12);
        // Two nodes of 4 groups: only the 1 of 70 choices that takes one node's 4 groups
        // stays on one node... from each side: 2 (1 - 1/70).
        assert!((v3_expected_nodes(2) - 2.0 * (1.0 - 1.0 / 70.0)).abs() < 1e-12);
        assert!((v3_expected_nodes(8) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_topologies() {
        let mut t = Topology::h800_normal();
        assert!(t.check(32).is_ok());
        assert!(t.check(12).unwrap_err().to_string().contains("divide"));
        t.dispatch.bandwidth_gb_s[RDMA] = 0.0;
        assert!(t.check(32).unwrap_err().to_string().contains("positive"));
        t = Topology::h800_normal();
        t.combine.latency_us[NVLINK] = f64::NAN;
        assert!(t.check(32).is_err());
    }
}
