//! Strongly connected components (Tarjan) and one concrete cycle through
//! each: a component of two or more modules is a cycle; the path printed
//! is the shortest way from its first module back to itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A directed graph over module names.
#[derive(Debug, Default)]
pub struct Graph {
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    pub fn add(&mut self, from: &str, to: &str) {
        if from != to {
            self.edges
                .entry(from.to_owned())
                .or_default()
                .insert(to.to_owned());
            self.edges.entry(to.to_owned()).or_default();
        }
    }

    /// Every component of two or more nodes, each sorted, in name order.
    pub fn cycles(&self) -> Vec<BTreeSet<String>> {
        let mut tarjan = Tarjan {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            next: 0,
            found: Vec::new(),
        };
        for node in self.edges.keys() {
            if !tarjan.index.contains_key(node.as_str()) {
                tarjan.visit(node);
            }
        }
        let mut found: Vec<BTreeSet<String>> =
            tarjan.found.into_iter().filter(|c| c.len() > 1).collect();
        found.sort();
        found
    }

    /// The shortest path from the first node of `component` back to it,
    /// staying inside the component: `[a, b, a]`.
    pub fn path_through(&self, component: &BTreeSet<String>) -> Vec<String> {
        let Some(start) = component.iter().next() else {
            return Vec::new();
        };
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start.as_str()]);
        while let Some(node) = queue.pop_front() {
            for next in self.edges.get(node).into_iter().flatten() {
                if !component.contains(next) {
                    continue;
                }
                if next == start {
                    let mut path = vec![start.clone(), node.to_owned()];
                    let mut at = node;
                    while let Some(prev) = came_from.get(at) {
                        path.push((*prev).to_owned());
                        at = prev;
                    }
                    path.reverse();
                    return path;
                }
                if !came_from.contains_key(next.as_str()) {
                    came_from.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        Vec::new()
    }
}

struct Tarjan<'g> {
    graph: &'g Graph,
    index: BTreeMap<&'g str, usize>,
    low: BTreeMap<&'g str, usize>,
    stack: Vec<&'g str>,
    on_stack: BTreeSet<&'g str>,
    next: usize,
    found: Vec<BTreeSet<String>>,
}

impl<'g> Tarjan<'g> {
    // Recursive: module graphs are a few dozen nodes deep at most.
    fn visit(&mut self, node: &'g str) {
        self.index.insert(node, self.next);
        self.low.insert(node, self.next);
        self.next += 1;
        self.stack.push(node);
        self.on_stack.insert(node);
        for next in self.graph.edges.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !self.index.contains_key(next) {
                self.visit(next);
                let low = self.low[node].min(self.low[next]);
                self.low.insert(node, low);
            } else if self.on_stack.contains(next) {
                let low = self.low[node].min(self.index[next]);
                self.low.insert(node, low);
            }
        }
        if self.low[node] == self.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = self.stack.pop() {
                self.on_stack.remove(top);
                component.insert(top.to_owned());
                if top == node {
                    break;
                }
            }
            self.found.push(component);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> Graph {
        let mut g = Graph::default();
        for (a, b) in edges {
            g.add(a, b);
        }
        g
    }

    #[test]
    fn a_chain_has_no_cycle() {
        assert!(
            graph(&[("a", "b"), ("b", "c"), ("a", "c")])
                .cycles()
                .is_empty()
        );
    }

    #[test]
    fn a_three_step_cycle_is_one_component_with_its_path() {
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]);
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(g.path_through(&cycles[0]), ["a", "b", "c", "a"]);
    }

    #[test]
    fn separate_cycles_are_reported_separately() {
        let g = graph(&[("a", "b"), ("b", "a"), ("x", "y"), ("y", "x"), ("a", "x")]);
        assert_eq!(g.cycles().len(), 2);
    }
}
