//! The edge's fast path to instances: two small eBPF programs on a host's tc ingress that carry
//! the router's connections across the host namespace without the host's IP stack, so an
//! instance in its own namespace costs the router about what a process in the host's
//! namespace did (a routed veth hop otherwise costs a backlog pass and the forward path).
//!
//! - *To instances*, on the host's uplink (`eth0`, a veth whose peer is in the edge's
//!   namespace): a TCP packet from an edge address to an instance's port is handed straight to
//!   the instance's side of its veth pair (`bpf_redirect_peer`).
//! - *From instances*, on each instance's host-side veth: a TCP packet from the instance's own
//!   address and port, arriving on that instance's own veth, to an edge address, gets the
//!   uplink's MAC addresses from the host's routing table (`bpf_fib_lookup`) and is handed
//!   straight to the uplink's peer (the bridge port in the edge's namespace).
//!
//! Both directions go only where the firewall (`firewall.rs`) would have let the packet go,
//! and only for a connection the edge really has open: each program looks the connection up
//! among the edge namespace's own sockets (`bpf_skc_lookup_tcp`) and takes the fast path only
//! for a socket connecting or connected to the instance (never a listener: an instance cannot
//! open a connection to the edge this way). The packet from an instance must carry the address
//! and arrive on the veth the control plane gave it (the firewall's source guard), to the port
//! it serves. Anything else, and anything the programs cannot decide (no route, a changed veth,
//! IP options, fragments, IPv6), continues on the ordinary path through nftables. Because both
//! programs require the same map entry, the same route and the same edge socket, a connection
//! takes the fast path both ways or neither (the host's conntrack does not see the packets of a
//! connection that took it, so half of one on the ordinary path would be refused there).
//!
//! The programs are assembled here (a dozen of the kernel's instructions per step) rather than
//! compiled from C: no compiler or loader library is needed, and `enjin-sys` does the four
//! `bpf(2)` calls. Maps, programs and links live as long as the [`FastPath`]: when its agent
//! exits, they are gone and every packet takes the ordinary path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;

use enjin_model::api::HostFirewall;
use enjin_sys::bpf::{self, HashMap, Insn};

use crate::NetError;

/// The host's interface towards the edge (what `ensure_host` names it).
pub const UPLINK: &str = "eth0";

/// Most instances one host's fast path holds; beyond them, instances take the ordinary path.
pub const MAX_INSTANCES: u32 = 16_384;
/// Most edge addresses.
pub const MAX_EDGES: u32 = 64;

/// The host's fast path: its maps, its two programs and their links.
#[derive(Debug)]
pub struct FastPath {
    instances: HashMap,
    edges: HashMap,
    from_instances: OwnedFd,
    /// Held for its link's life: the uplink's program.
    _to_instances: (OwnedFd, OwnedFd),
    /// Instance veth name → (ifindex, link).
    attached: BTreeMap<String, (u32, OwnedFd)>,
}

/// What [`FastPath::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Instances on the fast path.
    pub instances: usize,
    /// Instances of the firewall left on the ordinary path (no veth yet, IPv6, no port).
    pub skipped: usize,
}

/// One interface of `ip -j link`.
#[derive(Debug, serde::Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    link_netnsid: Option<i32>,
    #[serde(default)]
    link_type: Option<String>,
}

fn links() -> Result<Vec<Link>, NetError> {
    let out = crate::ip(&["-j", "link", "show"])?;
    serde_json::from_str(&out).map_err(|e| NetError::Failed {
        args: "-j link show".into(),
        stderr: format!("unreadable JSON: {e}"),
    })
}

fn bpf_err(what: &str, e: bpf::BpfError) -> NetError {
    NetError::Failed { args: format!("(eBPF fast path) {what}"), stderr: e.to_string() }
}

impl FastPath {
    /// Load the programs and attach the uplink's, in the calling thread's namespace (a host's).
    /// `Ok(None)` when the host has no uplink veth with a peer in another namespace, where
    /// there is nothing to shorten.
    pub fn new() -> Result<Option<FastPath>, NetError> {
        let links = links()?;
        let Some(uplink) = links.iter().find(|l| l.ifname == UPLINK) else { return Ok(None) };
        let Some(netnsid) = uplink.link_netnsid.filter(|id| *id >= 0) else { return Ok(None) };
        if uplink.link_type.as_deref().is_some_and(|t| t != "ether") {
            return Ok(None);
        }
        let instances =
            HashMap::create("enjin_inst", 4, 8, MAX_INSTANCES).map_err(|e| bpf_err("instances map", e))?;
        let edges = HashMap::create("enjin_edges", 4, 4, MAX_EDGES).map_err(|e| bpf_err("edges map", e))?;
        let to = program(Direction::ToInstance, &instances, &edges, netnsid as u32, uplink.ifindex);
        let to = bpf::load_sched_cls("enjin_to_inst", &to, LICENSE).map_err(|e| bpf_err("load", e))?;
        let from = program(Direction::FromInstance, &instances, &edges, netnsid as u32, uplink.ifindex);
        let from = bpf::load_sched_cls("enjin_from_inst", &from, LICENSE).map_err(|e| bpf_err("load", e))?;
        let link =
            bpf::attach_tcx_ingress(&to, uplink.ifindex).map_err(|e| bpf_err("attach to the uplink", e))?;
        Ok(Some(FastPath {
            instances,
            edges,
            from_instances: from,
            _to_instances: (to, link),
            attached: BTreeMap::new(),
        }))
    }

    /// Make the fast path hold exactly `fw`'s instances that have a port, an IPv4 address and
    /// a veth on this host now, and `fw`'s edge addresses. An instance is attached before it is
    /// entered in the map and taken out of the map before it is detached, so no connection
    /// ever has the fast path one way only.
    pub fn sync(&mut self, fw: &HostFirewall) -> Result<Synced, NetError> {
        let ifindex: BTreeMap<String, u32> = links()?.into_iter().map(|l| (l.ifname, l.ifindex)).collect();
        let mut want: BTreeMap<[u8; 4], (String, u32, u16)> = BTreeMap::new();
        let mut skipped = 0;
        for inst in &fw.instances {
            match (inst.address, inst.port, ifindex.get(&inst.interface)) {
                (IpAddr::V4(a), Some(port), Some(idx)) => {
                    want.insert(a.octets(), (inst.interface.clone(), *idx, port));
                }
                _ => skipped += 1,
            }
        }
        // Attach the new (or remade) veths' programs.
        for (iface, idx, _) in want.values() {
            if self.attached.get(iface).is_some_and(|(i, _)| i == idx) {
                continue;
            }
            let link = bpf::attach_tcx_ingress(&self.from_instances, *idx)
                .map_err(|e| bpf_err(&format!("attach to {iface}"), e))?;
            self.attached.insert(iface.clone(), (*idx, link));
        }
        let edges: Vec<[u8; 4]> = fw
            .edge
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(v4.octets()),
                IpAddr::V6(_) => None,
            })
            .take(MAX_EDGES as usize)
            .collect();
        for e in &edges {
            self.edges.update(e, &1u32.to_ne_bytes()).map_err(|e| bpf_err("edge entry", e))?;
        }
        for (addr, (_, idx, port)) in &want {
            let mut value = [0u8; 8];
            value[..4].copy_from_slice(&idx.to_ne_bytes());
            value[4..6].copy_from_slice(&port.to_be_bytes());
            self.instances.update(addr, &value).map_err(|e| bpf_err("instance entry", e))?;
        }
        for key in self.instances.keys().map_err(|e| bpf_err("instance keys", e))? {
            if key.len() == 4 && !want.contains_key(&[key[0], key[1], key[2], key[3]]) {
                self.instances.delete(&key).map_err(|e| bpf_err("instance removal", e))?;
            }
        }
        for key in self.edges.keys().map_err(|e| bpf_err("edge keys", e))? {
            if !edges.iter().any(|e| e[..] == key[..]) {
                self.edges.delete(&key).map_err(|e| bpf_err("edge removal", e))?;
            }
        }
        let live: std::collections::BTreeSet<&String> = want.values().map(|(i, _, _)| i).collect();
        self.attached.retain(|iface, _| live.contains(iface));
        Ok(Synced { instances: want.len(), skipped })
    }

    /// The instance addresses on the fast path now (for tests and diagnostics).
    pub fn instances(&self) -> Vec<Ipv4Addr> {
        self.instances
            .keys()
            .unwrap_or_default()
            .into_iter()
            .filter(|k| k.len() == 4)
            .map(|k| Ipv4Addr::new(k[0], k[1], k[2], k[3]))
            .collect()
    }
}

/// The programs' license: `bpf_fib_lookup` is one of the kernel's GPL-only helpers, and the
/// kernel counts a dual license with the GPL as compatible. These two programs, and only
/// they, are offered under the GPL as well as the project's own license.
const LICENSE: &str = "Dual MIT/GPL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToInstance,
    FromInstance,
}

// --- A small assembler -------------------------------------------------------------------

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const FP: u8 = 10;

const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;

const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;

// Helpers (`enum bpf_func_id`).
const MAP_LOOKUP_ELEM: i32 = 1;
const FIB_LOOKUP: i32 = 69;
const SK_RELEASE: i32 = 86;
const SKC_LOOKUP_TCP: i32 = 99;
const REDIRECT_PEER: i32 = 155;

/// `BPF_FIB_LOOKUP_SKIP_NEIGH`: the route only (to a peer namespace no MAC is needed).
const FIB_SKIP_NEIGH: i32 = 1 << 2;
/// tcx: let the next program, or the stack, have the packet.
const TCX_NEXT: i32 = -1;

/// TCP states of an edge socket whose connection may take the fast path: established,
/// SYN-SENT, FIN-WAIT-1/2, TIME-WAIT, CLOSE-WAIT, LAST-ACK, CLOSING (not SYN-RECV, CLOSE,
/// LISTEN or NEW-SYN-RECV: the edge's side of such a connection is not one it opened).
const EDGE_STATES: i32 =
    (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9) | (1 << 11);

// `struct __sk_buff` and `struct bpf_sock` offsets (UAPI, stable).
const SKB_INGRESS_IFINDEX: i16 = 36;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
const SOCK_STATE: i16 = 72;

// The stack frame: keys, the socket tuple (`bpf_sock_tuple.ipv4`: saddr, daddr, sport,
// dport) and `struct bpf_fib_lookup` (64 bytes).
const K_INSTANCE: i16 = -4;
const K_EDGE: i16 = -8;
const TUPLE: i16 = -24;
const FIB: i16 = -96;
const FIB_IFINDEX: i16 = FIB + 8;
const FIB_SRC: i16 = FIB + 16;
const FIB_DST: i16 = FIB + 32;
const FIB_SMAC: i16 = FIB + 52;
const FIB_DMAC: i16 = FIB + 58;

#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) of jumps to patch.
    jumps: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (src << 4) | dst, off, imm });
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn here(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn mov(&mut self, dst: u8, src: u8) {
        self.emit(0x07 | 0xb0 | 0x08, dst, src, 0, 0);
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x07 | 0xb0, dst, 0, 0, imm);
    }
    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x07, dst, 0, 0, imm);
    }
    fn and_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x07 | 0x50, dst, 0, 0, imm);
    }
    fn lsh(&mut self, dst: u8, src: u8) {
        self.emit(0x07 | 0x60 | 0x08, dst, src, 0, 0);
    }
    /// `dst = *(size *)(src + off)`
    fn ldx(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.emit(0x01 | 0x60 | size, dst, src, off, 0);
    }
    /// `*(size *)(dst + off) = src`
    fn stx(&mut self, size: u8, dst: u8, off: i16, src: u8) {
        self.emit(0x03 | 0x60 | size, dst, src, off, 0);
    }
    /// `*(size *)(dst + off) = imm`
    fn st(&mut self, size: u8, dst: u8, off: i16, imm: i32) {
        self.emit(0x02 | 0x60 | size, dst, 0, off, imm);
    }
    fn jmp_imm(&mut self, op: u8, dst: u8, imm: i32, to: usize) {
        self.jumps.push((self.insns.len(), to));
        self.emit(0x05 | op, dst, 0, 0, imm);
    }
    fn jmp(&mut self, op: u8, dst: u8, src: u8, to: usize) {
        self.jumps.push((self.insns.len(), to));
        self.emit(0x05 | op | 0x08, dst, src, 0, 0);
    }
    fn call(&mut self, helper: i32) {
        self.emit(0x05 | 0x80, 0, 0, 0, helper);
    }
    fn exit(&mut self) {
        self.emit(0x05 | 0x90, 0, 0, 0, 0);
    }
    /// `dst = map` (a 16-byte load the kernel resolves from the map's descriptor).
    fn map(&mut self, dst: u8, map: &HashMap) {
        self.emit(0x18, dst, 1, 0, map.raw_fd());
        self.emit(0, 0, 0, 0, 0);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.jumps) {
            let target = self.labels[label].expect("every label is placed");
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// One direction's program. `netnsid` is the edge namespace's id as the host sees it (the
/// uplink's peer's); `uplink` is the uplink's ifindex.
fn program(dir: Direction, instances: &HashMap, edges: &HashMap, netnsid: u32, uplink: u32) -> Vec<Insn> {
    let mut a = Asm::default();
    let pass = a.label();
    a.mov(R6, R1);

    // An IPv4 packet without options or fragmentation, carrying TCP, its ports within reach.
    a.ldx(W, R2, R6, SKB_DATA);
    a.ldx(W, R3, R6, SKB_DATA_END);
    a.mov(R4, R2);
    a.add_imm(R4, 38);
    a.jmp(JGT, R4, R3, pass);
    a.ldx(H, R4, R2, 12);
    a.jmp_imm(JNE, R4, 0x0008, pass); // ETH_P_IP, as a little-endian load sees it
    a.ldx(B, R4, R2, 14);
    a.jmp_imm(JNE, R4, 0x45, pass);
    a.ldx(B, R4, R2, 23);
    a.jmp_imm(JNE, R4, 6, pass);
    a.ldx(H, R4, R2, 20);
    a.and_imm(R4, 0xff3f); // more-fragments and the offset, as a little-endian load sees them
    a.jmp_imm(JNE, R4, 0, pass);

    // The keys, and the tuple as the edge's socket would see an arriving packet of the
    // connection: from the instance to the edge.
    let (inst_addr, edge_addr, inst_port, edge_port) = match dir {
        Direction::ToInstance => (30, 26, 36, 34),
        Direction::FromInstance => (26, 30, 34, 36),
    };
    a.ldx(W, R4, R2, inst_addr);
    a.stx(W, FP, K_INSTANCE, R4);
    a.stx(W, FP, TUPLE, R4);
    a.ldx(W, R4, R2, edge_addr);
    a.stx(W, FP, K_EDGE, R4);
    a.stx(W, FP, TUPLE + 4, R4);
    a.ldx(H, R4, R2, inst_port);
    a.stx(H, FP, TUPLE + 8, R4);
    a.ldx(H, R4, R2, edge_port);
    a.stx(H, FP, TUPLE + 10, R4);

    // The instance: its port, and (from it) the veth it must arrive on.
    a.map(R1, instances);
    a.mov(R2, FP);
    a.add_imm(R2, K_INSTANCE as i32);
    a.call(MAP_LOOKUP_ELEM);
    a.jmp_imm(JEQ, R0, 0, pass);
    a.ldx(H, R4, R0, 4);
    a.ldx(H, R5, FP, TUPLE + 8);
    a.jmp(JNE, R4, R5, pass);
    a.ldx(W, R7, R0, 0);
    if dir == Direction::FromInstance {
        a.ldx(W, R4, R6, SKB_INGRESS_IFINDEX);
        a.jmp(JNE, R4, R7, pass);
    }

    // The edge.
    a.map(R1, edges);
    a.mov(R2, FP);
    a.add_imm(R2, K_EDGE as i32);
    a.call(MAP_LOOKUP_ELEM);
    a.jmp_imm(JEQ, R0, 0, pass);

    // The route: to the instance out of its veth now (a remade veth has a new index: until
    // the map is synced again, its packets take the ordinary path); from it, out of the uplink.
    for off in (0..64).step_by(8) {
        a.st(DW, FP, FIB + off, 0);
    }
    a.st(B, FP, FIB, 2); // AF_INET
    a.st(B, FP, FIB + 1, 6); // IPPROTO_TCP
    a.ldx(W, R4, R6, SKB_INGRESS_IFINDEX);
    a.stx(W, FP, FIB_IFINDEX, R4);
    let (src, dst) = match dir {
        Direction::ToInstance => (K_EDGE, K_INSTANCE),
        Direction::FromInstance => (K_INSTANCE, K_EDGE),
    };
    a.ldx(W, R4, FP, src);
    a.stx(W, FP, FIB_SRC, R4);
    a.ldx(W, R4, FP, dst);
    a.stx(W, FP, FIB_DST, R4);
    a.mov(R1, R6);
    a.mov(R2, FP);
    a.add_imm(R2, FIB as i32);
    a.mov_imm(R3, 64);
    a.mov_imm(R4, if dir == Direction::ToInstance { FIB_SKIP_NEIGH } else { 0 });
    a.call(FIB_LOOKUP);
    a.jmp_imm(JNE, R0, 0, pass);
    a.ldx(W, R4, FP, FIB_IFINDEX);
    match dir {
        Direction::ToInstance => a.jmp(JNE, R4, R7, pass),
        Direction::FromInstance => a.jmp_imm(JNE, R4, uplink as i32, pass),
    }

    // The edge's own socket for the connection, in the edge's namespace.
    a.mov(R1, R6);
    a.mov(R2, FP);
    a.add_imm(R2, TUPLE as i32);
    a.mov_imm(R3, 12);
    a.mov_imm(R4, netnsid as i32);
    a.mov_imm(R5, 0);
    a.call(SKC_LOOKUP_TCP);
    a.jmp_imm(JEQ, R0, 0, pass);
    a.ldx(W, R8, R0, SOCK_STATE);
    a.mov(R1, R0);
    a.call(SK_RELEASE);
    a.jmp_imm(JGT, R8, 15, pass);
    a.mov_imm(R4, 1);
    a.lsh(R4, R8);
    a.and_imm(R4, EDGE_STATES);
    a.jmp_imm(JEQ, R4, 0, pass);

    match dir {
        Direction::ToInstance => a.mov(R1, R7),
        Direction::FromInstance => {
            // The uplink's addresses, as the route found them, for the bridge on the other side.
            a.ldx(W, R2, R6, SKB_DATA);
            a.ldx(W, R3, R6, SKB_DATA_END);
            a.mov(R4, R2);
            a.add_imm(R4, 14);
            a.jmp(JGT, R4, R3, pass);
            // In halves: the MACs sit at offsets 52 and 58 of the lookup's result.
            for i in (0..6).step_by(2) {
                a.ldx(H, R4, FP, FIB_DMAC + i);
                a.stx(H, R2, i, R4);
                a.ldx(H, R4, FP, FIB_SMAC + i);
                a.stx(H, R2, 6 + i, R4);
            }
            a.mov_imm(R1, uplink as i32);
        }
    }
    a.mov_imm(R2, 0);
    a.call(REDIRECT_PEER);
    a.exit();

    a.here(pass);
    a.mov_imm(R0, TCX_NEXT);
    a.exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_patched_forward() {
        let mut a = Asm::default();
        let l = a.label();
        a.jmp_imm(JEQ, R0, 0, l);
        a.mov_imm(R0, 1);
        a.here(l);
        a.exit();
        let insns = a.finish();
        assert_eq!(insns[0].off, 1);
        assert_eq!(insns[0].code, 0x15);
    }
}
