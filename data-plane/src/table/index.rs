//! The lookup index of one listener's routes.
//!
//! Layout: host pattern -> bucket (exact hosts and `*.suffix` wildcards in hash maps keyed by
//! the host / the suffix, plus one bucket for routes without hosts); per bucket, one level per
//! priority, highest first; per level an exact-path map, a radix trie of prefixes, the regex
//! routes and the routes without a path. Every list is sorted by (more conditions, name first),
//! so the first entry whose remaining conditions hold is the best of its kind.
//!
//! A lookup visits the exact-host bucket, the wildcard buckets of the host's suffixes (longest
//! first) and the any-host bucket, in host-tier order; a later bucket only matters if it has a
//! strictly higher priority, so only those levels are searched. Cost grows with the host's label
//! count, the path length, the priority levels of the visited buckets and their regex routes, not
//! with the route count.

use std::collections::BTreeMap;

use crate::fast_hash::FastMap;

use super::matcher::PathMatcher;
use super::request::RequestView;
use super::route::RouteEntry;

/// How a route's host pattern is written, the key it is indexed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostKey<'a> {
    Exact(&'a str),
    /// `*.suffix`, stored without `*.`.
    Wildcard(&'a str),
    Any,
}

impl<'a> HostKey<'a> {
    pub(crate) fn parse(pattern: &'a str) -> HostKey<'a> {
        match pattern.strip_prefix("*.") {
            Some(suffix) => HostKey::Wildcard(suffix),
            None => HostKey::Exact(pattern),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    exact: FastMap<Box<str>, Bucket>,
    wildcard: FastMap<Box<str>, Bucket>,
    any: Bucket,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Highest priority first.
    levels: Vec<Level>,
}

#[derive(Debug)]
struct Level {
    priority: i32,
    exact_paths: FastMap<Box<str>, Vec<u32>>,
    prefixes: Trie,
    regexes: Vec<u32>,
    no_path: Vec<u32>,
}

impl RouteIndex {
    /// `routes` must be sorted by name (ties go to the lower index) and `hosts[i]` holds the
    /// (lower-case, deduplicated) host patterns of `routes[i]`; an empty list means any host.
    pub(crate) fn build(routes: &[RouteEntry], hosts: &[Vec<String>]) -> RouteIndex {
        // Collect per (host key) the route indices, then build each bucket.
        let mut by_host: BTreeMap<HostKey<'_>, Vec<u32>> = BTreeMap::new();
        for (i, patterns) in hosts.iter().enumerate() {
            if patterns.is_empty() {
                by_host.entry(HostKey::Any).or_default().push(i as u32);
            }
            for p in patterns {
                by_host.entry(HostKey::parse(p)).or_default().push(i as u32);
            }
        }
        let mut index = RouteIndex::default();
        for (key, members) in by_host {
            let bucket = Bucket::build(routes, members);
            match key {
                HostKey::Exact(h) => {
                    index.exact.insert(h.into(), bucket);
                }
                HostKey::Wildcard(s) => {
                    index.wildcard.insert(s.into(), bucket);
                }
                HostKey::Any => index.any = bucket,
            }
        }
        index
    }

    pub(crate) fn find(&self, routes: &[RouteEntry], req: &RequestView<'_>) -> Option<u32> {
        let mut best: Option<(i32, u32)> = None;
        let mut visit = |bucket: &Bucket| {
            for level in &bucket.levels {
                // Buckets come in host-tier order, so an equal priority never beats what we have.
                if best.is_some_and(|(p, _)| level.priority <= p) {
                    break;
                }
                if let Some(i) = level.find(routes, req) {
                    best = Some((level.priority, i));
                    break;
                }
            }
        };
        if let Some(host) = req.host.filter(|h| !h.is_empty()) {
            if let Some(b) = self.exact.get(host) {
                visit(b);
            }
            // `*.a.b` matches `x.a.b` and `x.y.a.b` but not `a.b`: strip one label at a time.
            if !self.wildcard.is_empty() && !host.starts_with('.') {
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(b) = self.wildcard.get(rest) {
                        visit(b);
                    }
                }
            }
        }
        visit(&self.any);
        best.map(|(_, i)| i)
    }
}

impl Bucket {
    fn build(routes: &[RouteEntry], mut members: Vec<u32>) -> Bucket {
        // Same route listed twice under one key (`hosts: [a, a]`) must appear once.
        members.sort_unstable();
        members.dedup();
        // Highest priority first; within a priority, more conditions first, then name order.
        members.sort_by_key(|&i| {
            let r = &routes[i as usize];
            (std::cmp::Reverse(r.priority), std::cmp::Reverse(r.conditions.condition_count()), i)
        });
        let mut levels: Vec<Level> = Vec::new();
        for i in members {
            let r = &routes[i as usize];
            if levels.last().is_none_or(|l| l.priority != r.priority) {
                levels.push(Level {
                    priority: r.priority,
                    exact_paths: FastMap::default(),
                    prefixes: Trie::default(),
                    regexes: Vec::new(),
                    no_path: Vec::new(),
                });
            }
            let level = levels.last_mut().expect("pushed above");
            match &r.conditions.path {
                PathMatcher::Any => level.no_path.push(i),
                PathMatcher::Exact(p) => level.exact_paths.entry(p.clone()).or_default().push(i),
                PathMatcher::Prefix(p) => level.prefixes.insert(p.as_bytes(), i),
                PathMatcher::Regex(_) => level.regexes.push(i),
            }
        }
        for level in &mut levels {
            level.prefixes.link_ancestors();
        }
        Bucket { levels }
    }
}

impl Level {
    /// The best route of this level for the request: exact path, then longest to shortest
    /// prefix, then regex, then no path; within each, the order the lists were sorted in.
    fn find(&self, routes: &[RouteEntry], req: &RequestView<'_>) -> Option<u32> {
        let ok = |i: &&u32| routes[**i as usize].conditions.matches_rest(req);
        if let Some(list) = self.exact_paths.get(req.path) {
            if let Some(&i) = list.iter().find(ok) {
                return Some(i);
            }
        }
        if let Some(i) = self.prefixes.find(req.path.as_bytes(), |i| ok(&&i)) {
            return Some(i);
        }
        self.regexes.iter().find(ok).or_else(|| self.no_path.iter().find(ok)).copied()
    }
}

const NO_NODE: u32 = u32::MAX;

/// A radix trie over path bytes. Each node also links to its nearest ancestor that holds
/// routes, so a lookup walks down once and then tries candidates longest prefix first, without
/// a stack or an allocation.
#[derive(Debug)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// The bytes on the edge from the parent.
    label: Box<[u8]>,
    /// Child node indices, sorted by the first byte of their label (unique per node), and those
    /// first bytes alongside, so finding a child touches one small array.
    children: Vec<u32>,
    child_keys: Vec<u8>,
    /// Routes whose prefix ends here, in the order they were inserted (already the wanted order).
    routes: Vec<u32>,
    /// Nearest ancestor with routes, or `NO_NODE`.
    up: u32,
}

impl Default for Trie {
    fn default() -> Trie {
        Trie { nodes: vec![TrieNode { up: NO_NODE, ..TrieNode::default() }] }
    }
}

impl Trie {
    fn insert(&mut self, key: &[u8], route: u32) {
        let mut node = 0usize;
        let mut rest = key;
        loop {
            if rest.is_empty() {
                self.nodes[node].routes.push(route);
                return;
            }
            let child = self.child(node, rest[0]);
            let Some(child) = child else {
                let new = self.push(rest, vec![route]);
                self.add_child(node, new);
                return;
            };
            let label = &self.nodes[child].label;
            let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
            if common < label.len() {
                // Split the edge: a new middle node takes the common part, the old child the rest.
                let (head, tail) = (label[..common].to_vec(), label[common..].to_vec());
                self.nodes[child].label = tail.into();
                // `middle` keeps the old child's first byte, so the parent's child_keys stay right.
                let middle = self.push(&head, Vec::new());
                self.add_child(middle, child);
                let slot = self.nodes[node].children.iter().position(|&c| c as usize == child).expect("child of node");
                self.nodes[node].children[slot] = middle as u32;
                node = middle;
            } else {
                node = child;
            }
            rest = &rest[common..];
        }
    }

    fn push(&mut self, label: &[u8], routes: Vec<u32>) -> usize {
        self.nodes.push(TrieNode { label: label.into(), routes, up: NO_NODE, ..TrieNode::default() });
        self.nodes.len() - 1
    }

    fn add_child(&mut self, node: usize, child: usize) {
        let first = self.nodes[child].label[0];
        let parent = &mut self.nodes[node];
        let at = parent.child_keys.partition_point(|&k| k < first);
        parent.child_keys.insert(at, first);
        parent.children.insert(at, child as u32);
    }

    fn child(&self, node: usize, first: u8) -> Option<usize> {
        let n = &self.nodes[node];
        n.child_keys.binary_search(&first).ok().map(|at| n.children[at] as usize)
    }

    /// Sets every node's `up` link; call once after the last insert.
    fn link_ancestors(&mut self) {
        let mut stack = vec![(0usize, NO_NODE)];
        while let Some((node, up)) = stack.pop() {
            self.nodes[node].up = up;
            let below = if self.nodes[node].routes.is_empty() { up } else { node as u32 };
            stack.extend(self.nodes[node].children.iter().map(|&c| (c as usize, below)));
        }
    }

    /// The first route, longest matching prefix first, for which `ok` holds.
    fn find(&self, path: &[u8], mut ok: impl FnMut(u32) -> bool) -> Option<u32> {
        let (mut node, mut rest) = (0usize, path);
        let mut deepest = if self.nodes[0].routes.is_empty() { NO_NODE } else { 0 };
        while let Some(&first) = rest.first() {
            let Some(child) = self.child(node, first) else { break };
            let label = &self.nodes[child].label;
            if !rest.starts_with(label) {
                break;
            }
            rest = &rest[label.len()..];
            node = child;
            if !self.nodes[node].routes.is_empty() {
                deepest = node as u32;
            }
        }
        while deepest != NO_NODE {
            let n = &self.nodes[deepest as usize];
            if let Some(&i) = n.routes.iter().find(|&&i| ok(i)) {
                return Some(i);
            }
            deepest = n.up;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_longest_prefix_first() {
        let mut t = Trie::default();
        for (i, p) in ["/api/", "/api/v1/", "/a", "/images/", "/api/v1/users", "/"].iter().enumerate() {
            t.insert(p.as_bytes(), i as u32);
        }
        t.link_ancestors();
        let all = |path: &str| {
            let mut seen = Vec::new();
            t.find(path.as_bytes(), |i| {
                seen.push(i);
                false
            });
            seen
        };
        assert_eq!(all("/api/v1/users/7"), vec![4, 1, 0, 2, 5]);
        assert_eq!(all("/api"), vec![2, 5]);
        assert_eq!(all("/img"), vec![5]);
        assert_eq!(all("/images/x"), vec![3, 5]);
        assert_eq!(all("x"), Vec::<u32>::new());
        assert_eq!(t.find(b"/api/v1/x", |i| i == 0), Some(0));
    }
}
