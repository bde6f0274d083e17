// xsping: the cost of one xenstore request, for `bench/run` (std only; built at bench time
// with `rustc -O`, so it measures what a compiled in-process client pays, not Python).
//
//   xsping SOCKET PATH COUNT
//
// PATH must exist. Prints one line of `key=value` pairs:
//   seq_med_us, seq_min_us, seq_p90_us  one READ, waiting for each reply (a round trip)
//   pipe1_us                            per READ with 32 in flight on one connection
//   pipe4_us                            per READ with 32 in flight on each of 4 connections,
//                                       served round robin as src/xs.rs does: what the
//                                       daemon itself needs per request (its throughput)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn request(ty: u32, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    for v in [ty, id, 0, payload.len() as u32] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

fn reply(s: &mut UnixStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).expect("reply header");
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut p = vec![0u8; word(12) as usize];
    s.read_exact(&mut p).expect("reply payload");
    (word(0), p)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        eprintln!("usage: xsping SOCKET PATH COUNT");
        std::process::exit(2);
    }
    let count: usize = a[3].parse().expect("COUNT");
    let mut s = UnixStream::connect(&a[1]).expect("connect");
    let mut path = a[2].clone().into_bytes();
    path.push(0);
    let req = request(2, 1, &path);
    let (ty, _) = {
        s.write_all(&req).expect("write");
        reply(&mut s)
    };
    if ty != 2 {
        eprintln!("xsping: READ {} failed", a[2]);
        std::process::exit(1);
    }
    // Warm up, then time each round trip.
    for _ in 0..200 {
        s.write_all(&req).expect("write");
        reply(&mut s);
    }
    let mut t: Vec<f64> = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        s.write_all(&req).expect("write");
        reply(&mut s);
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(|x, y| x.partial_cmp(y).expect("no NaN"));
    let pipe1 = pipelined(&a[1], &req, 1, count);
    let pipe4 = pipelined(&a[1], &req, 4, count);
    println!(
        "seq_med_us={:.1} seq_min_us={:.1} seq_p90_us={:.1} pipe1_us={:.1} pipe4_us={:.1}",
        t[t.len() / 2],
        t[0],
        t[t.len() * 9 / 10],
        pipe1,
        pipe4
    );
}

/// Microseconds per request with a window of 32 on each of `conns` connections (the
/// best of three runs of `count` requests).
fn pipelined(sock: &str, req: &[u8], conns: usize, count: usize) -> f64 {
    let window = 32;
    let mut ss: Vec<UnixStream> = (0..conns)
        .map(|_| UnixStream::connect(sock).expect("connect"))
        .collect();
    let many: Vec<u8> = (0..window).flat_map(|_| req.iter().copied()).collect();
    let rounds = count.div_ceil(window * conns).max(1);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        for s in ss.iter_mut() {
            s.write_all(&many).expect("write");
        }
        for r in 0..rounds {
            for s in ss.iter_mut() {
                for _ in 0..window {
                    reply(s);
                }
                if r + 1 < rounds {
                    s.write_all(&many).expect("write");
                }
            }
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / (rounds * window * conns) as f64;
        best = best.min(us);
    }
    best
}
