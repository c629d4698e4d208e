//! The compartment graph: compartments with one or more parents must form a directed acyclic
//! graph. The control plane checks every change of parents against the whole graph.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

/// If giving `node` the parents `new_parents` closes a cycle in `graph` (child → parents), the
/// cycle as a path `node → … → node`.
pub fn cycle_through(
    graph: &HashMap<Uuid, Vec<Uuid>>,
    node: Uuid,
    new_parents: &[Uuid],
) -> Option<Vec<Uuid>> {
    // A cycle appears exactly when `node` is reachable upwards from one of its new parents.
    for start in new_parents {
        let mut stack = vec![(*start, vec![node, *start])];
        let mut seen = HashSet::new();
        while let Some((at, path)) = stack.pop() {
            if at == node {
                return Some(path);
            }
            if !seen.insert(at) {
                continue;
            }
            for p in graph.get(&at).into_iter().flatten() {
                let mut next = path.clone();
                next.push(*p);
                stack.push((*p, next));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect()
    }

    /// Whether the graph has any cycle, by Kahn's algorithm (an independent check).
    fn has_cycle(graph: &HashMap<Uuid, Vec<Uuid>>) -> bool {
        let mut indegree: HashMap<Uuid, usize> = HashMap::new();
        for (c, ps) in graph {
            indegree.entry(*c).or_default();
            for p in ps {
                *indegree.entry(*p).or_default() += 0;
                *indegree.entry(*c).or_default() += 1;
            }
        }
        let mut ready: Vec<Uuid> = indegree.iter().filter(|(_, d)| **d == 0).map(|(k, _)| *k).collect();
        let mut removed = 0;
        while let Some(n) = ready.pop() {
            removed += 1;
            for (c, ps) in graph {
                for p in ps {
                    if *p == n {
                        let d = indegree.entry(*c).or_default();
                        *d -= 1;
                        if *d == 0 {
                            ready.push(*c);
                        }
                    }
                }
            }
        }
        removed != indegree.len()
    }

    #[test]
    fn self_parent_is_a_cycle() {
        let a = Uuid::from_u128(1);
        assert_eq!(cycle_through(&HashMap::new(), a, &[a]), Some(vec![a, a]));
    }

    #[test]
    fn diamond_is_fine_but_closing_it_is_not() {
        let [r, a, b, leaf] = [1u128, 2, 3, 4].map(Uuid::from_u128);
        let graph = HashMap::from([(a, vec![r]), (b, vec![r]), (leaf, vec![a, b])]);
        assert_eq!(cycle_through(&graph, r, &[]), None);
        let path = cycle_through(&graph, r, &[leaf]).expect("r under leaf closes a cycle");
        assert_eq!((path.first(), path.get(1), path.last()), (Some(&r), Some(&leaf), Some(&r)));
        assert_eq!(path.len(), 4);
    }

    proptest! {
        /// Applying random parent changes, each accepted only when `cycle_through` finds no
        /// cycle, never yields a graph with a cycle; and every refusal names a real cycle.
        #[test]
        fn the_dag_never_accepts_a_cycle(
            edits in proptest::collection::vec((0usize..8, proptest::collection::vec(0usize..8, 0..4)), 1..60)
        ) {
            let nodes = ids(8);
            let mut graph: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
            for (child, parents) in edits {
                let child = nodes[child];
                let mut parents: Vec<Uuid> = parents.into_iter().map(|p| nodes[p]).collect();
                parents.dedup();
                match cycle_through(&graph, child, &parents) {
                    None => {
                        graph.insert(child, parents);
                        prop_assert!(!has_cycle(&graph));
                    }
                    Some(path) => {
                        prop_assert_eq!(path.first(), Some(&child));
                        prop_assert_eq!(path.last(), Some(&child));
                        let mut trial = graph.clone();
                        trial.insert(child, parents);
                        prop_assert!(has_cycle(&trial));
                    }
                }
            }
        }
    }
}
