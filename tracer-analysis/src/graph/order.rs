//! A topological order of the graph, kept as edges come (Pearce and Kelly,
//! "A dynamic topological sort algorithm for directed acyclic graphs",
//! 2006), so that an insert learns in O(1) that it closes no cycle: an edge
//! `a -> b` with `a` before `b` cannot, since every path goes forward.
//!
//! Lock-order graphs do have cycles (each is a finding, and stays in the
//! graph), so the order is over *blocks*: sets of vertices that were found
//! on a cycle together, merged, with one place in the order. The invariant:
//! every edge between two blocks goes forward. A path that leaves a block
//! never comes back to it, so a cycle lies within one block or is closed
//! by an edge that goes backward. Removing vertices or edges keeps the
//! invariant (a block may then be more than a cycle: it is only searched).

use super::store::{NodeId, Store};

const FORWARD: usize = 0;
const BACKWARD: usize = 1;

impl<K: Copy + Eq + std::hash::Hash> Store<K> {
    fn ord(&self, n: NodeId) -> i64 {
        self.node(self.node(n).rep).ord
    }

    fn seen(&self, n: NodeId, way: usize, epoch: u32) -> bool {
        self.node(n).seen[way].get() == epoch
    }

    fn alone(&self, n: NodeId) -> bool {
        self.node(n).next == n
    }

    /// The vertices of block `rep`.
    fn members(&self, rep: NodeId) -> Vec<NodeId> {
        let mut members = vec![rep];
        let mut m = self.node(rep).next;
        while m != rep {
            members.push(m);
            m = self.node(m).next;
        }
        members
    }

    /// Called after adding the edge `a -> b`: whether a path `b ~> a` may
    /// exist (then the caller searches for it). Keeps the invariant: moves
    /// blocks when the edge goes backward and closes nothing, merges the
    /// blocks on the cycles it closes.
    pub fn may_reach(&mut self, b: NodeId, a: NodeId) -> bool {
        let (ra, rb) = (self.node(a).rep, self.node(b).rep);
        if ra == rb {
            return true;
        }
        let (oa, ob) = (self.ord(ra), self.ord(rb));
        if oa < ob {
            return false;
        }
        // Nothing leads to `a`, or nothing leaves `b`: moved to an end.
        if self.alone(a) && self.node(a).inc().is_empty() {
            self.low -= 1;
            self.node_mut(a).ord = self.low;
            return false;
        }
        if self.alone(b) && self.node(b).out().is_empty() {
            self.high += 1;
            self.node_mut(b).ord = self.high;
            return false;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Stamps of 2^32 searches ago would read as this one's.
            self.clear_stamps();
            self.epoch = 1;
        }
        // Blocks reachable from `b`'s without going past `a`'s place, and
        // blocks that reach `a`'s without going before `b`'s: only these
        // can be on a path `b ~> a`, or need to move.
        let (forward, closes) = self.search(rb, ra, oa, true);
        let (backward, _) = self.search(ra, rb, ob, false);
        let epoch = self.epoch;
        let mut slots: Vec<i64> = forward.iter().map(|&x| self.ord(x)).collect();
        slots.extend(
            backward
                .iter()
                .filter(|&&x| !self.seen(x, FORWARD, epoch))
                .map(|&x| self.ord(x)),
        );
        slots.sort_unstable();
        let by_ord = |store: &Self, mut v: Vec<NodeId>| {
            v.sort_by_key(|&x| store.ord(x));
            v
        };
        if !closes {
            // Pearce-Kelly: what reaches `a` goes before what `b` reaches,
            // in the places they had between them.
            let mut moved = by_ord(self, backward);
            moved.extend(by_ord(self, forward));
            for (x, ord) in moved.into_iter().zip(slots) {
                self.node_mut(x).ord = ord;
            }
            return false;
        }
        // The blocks both ways are on cycles through the new edge: one
        // block, between what only reaches it and what it only reaches.
        let (cycle, only_forward): (Vec<NodeId>, Vec<NodeId>) = forward
            .into_iter()
            .partition(|&x| self.seen(x, BACKWARD, epoch));
        let only_backward: Vec<NodeId> = backward
            .into_iter()
            .filter(|&x| !self.seen(x, FORWARD, epoch))
            .collect();
        let only_backward = by_ord(self, only_backward);
        let only_forward = by_ord(self, only_forward);
        for (&x, &ord) in only_backward.iter().zip(&slots) {
            self.node_mut(x).ord = ord;
        }
        for (&x, &ord) in only_forward.iter().rev().zip(slots.iter().rev()) {
            self.node_mut(x).ord = ord;
        }
        let merged_ord = slots[only_backward.len()];
        for &x in &cycle {
            if x != ra {
                self.merge(ra, x);
            }
        }
        self.node_mut(ra).ord = merged_ord;
        true
    }

    /// Blocks reachable from block `start` (forward) or reaching it
    /// (backward) without passing `bound` in the order, `start` included,
    /// marked with this epoch; and whether `goal` is one of them.
    fn search(
        &mut self,
        start: NodeId,
        goal: NodeId,
        bound: i64,
        forward: bool,
    ) -> (Vec<NodeId>, bool) {
        let epoch = self.epoch;
        let way = if forward { FORWARD } else { BACKWARD };
        let mut found = vec![start];
        let mut stack = vec![start];
        let mut reached = false;
        self.node(start).seen[way].set(epoch);
        while let Some(x) = stack.pop() {
            let mut m = x;
            loop {
                let member = self.node(m);
                let edges = if forward { member.out() } else { member.inc() };
                for &(w, _) in edges {
                    let w = self.node(w).rep;
                    let block = self.node(w);
                    if block.seen[way].get() == epoch {
                        continue;
                    }
                    if (forward && block.ord > bound) || (!forward && block.ord < bound) {
                        continue;
                    }
                    block.seen[way].set(epoch);
                    reached |= w == goal;
                    found.push(w);
                    stack.push(w);
                }
                m = member.next;
                if m == x {
                    break;
                }
            }
        }
        (found, reached)
    }

    /// Joins block `other` into block `rep`.
    fn merge(&mut self, rep: NodeId, other: NodeId) {
        for m in self.members(other) {
            self.node_mut(m).rep = rep;
        }
        let (a, b) = (self.node(rep).next, self.node(other).next);
        self.node_mut(rep).next = b;
        self.node_mut(other).next = a;
    }

    /// Takes vertex `n` out of its block (it is being removed).
    pub(super) fn leave_block(&mut self, n: NodeId) {
        if self.alone(n) {
            return;
        }
        let members = self.members(n);
        let (before, after) = (members[members.len() - 1], members[1]);
        self.node_mut(before).next = after;
        let rep = self.node(n).rep;
        if rep == n {
            let ord = self.node(n).ord;
            for &m in &members[1..] {
                self.node_mut(m).rep = after;
            }
            self.node_mut(after).ord = ord;
        }
        let node = self.node_mut(n);
        (node.next, node.rep) = (n, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaches(s: &Store<u32>, from: NodeId, to: NodeId) -> bool {
        let mut seen = vec![from];
        let mut stack = vec![from];
        while let Some(v) = stack.pop() {
            if v == to {
                return true;
            }
            for w in s.successors(v) {
                if !seen.contains(&w) {
                    seen.push(w);
                    stack.push(w);
                }
            }
        }
        false
    }

    /// Every edge between blocks goes forward; a block's vertices agree on
    /// it.
    fn check_invariant(s: &Store<u32>) {
        for (i, node) in s.all_nodes() {
            assert_eq!(s.node(node.rep).rep, node.rep, "vertex {i}");
            assert!(s.members(node.rep).contains(&i));
            for &(w, _) in node.out() {
                let (a, b) = (node.rep, s.node(w).rep);
                assert!(a == b || s.ord(a) < s.ord(b), "edge {i} -> {w} backward");
            }
        }
    }

    #[test]
    fn random_inserts_and_removals_keep_the_order_and_miss_no_path() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _round in 0..200 {
            let mut s = Store::<u32>::default();
            for _ in 0..60 {
                let (x, y) = (next(14) as u32, next(14) as u32);
                if next(8) == 0 {
                    if let Some(n) = s.id(&x) {
                        s.remove_node(n);
                    }
                    check_invariant(&s);
                    continue;
                }
                let a = s.id(&x).unwrap_or_else(|| s.add_node(x, true));
                let b = s.id(&y).unwrap_or_else(|| s.add_node(y, false));
                if a == b || s.edge(a, b).is_some() {
                    continue;
                }
                s.add_edge(a, b, crate::graph::tests::dep(x as u64, y as u64));
                let path = reaches(&s, b, a);
                let may = s.may_reach(b, a);
                assert!(may || !path, "missed a path {y} ~> {x}");
                check_invariant(&s);
            }
        }
    }
}
