//! Space-only with NVIDIA MPS: R client processes, each with its own context and data, run their
//! GEMMs concurrently through the MPS server.
//!
//! The parent starts the MPS control daemon before it creates any CUDA context itself, spawns
//! `tilemux bench mps-client` processes (which set up every workload shape, then obey `run` /
//! `quit` lines on stdin), releases the first R of them together per measurement, and stops the
//! daemon. Where the daemon cannot start, it says so and the variant is left out.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use rand::SeedableRng;
use tilemux::cuda::cublas::Cublas;
use tilemux::cuda::{DeviceBuffer, Gpu, Stream};
use tilemux::reference::Case;

use crate::gpu::median;

const PIPE: &str = "/tmp/tilemux-mps/pipe";
const LOG: &str = "/tmp/tilemux-mps/log";

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Shapes `m,n,k` the client prepares, in order (`run <index> <iters>` picks one).
    #[arg(long, value_delimiter = ';')]
    pub shapes: Vec<String>,
}

/// The client process: prepares each shape, then runs commands from stdin.
pub fn client(args: &ClientArgs) -> Result<()> {
    let gpu = Gpu::open(0)?;
    let stream = Stream::new()?;
    let blas = Cublas::new(&gpu, &stream)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut prepared = Vec::new();
    for s in &args.shapes {
        let v: Vec<u32> = s.split(',').map(|x| x.parse()).collect::<Result<_, _>>()?;
        ensure!(v.len() == 3, "shape {s}: expected m,n,k");
        let case = Case::plain(&mut rng, (v[0], v[1], v[2]));
        let up = |d: &[f32]| -> Result<DeviceBuffer> {
            let b = DeviceBuffer::new(d.len() * 4)?;
            // SAFETY: the buffer holds `d`.
            unsafe { cudarc::driver::sys::cuMemcpyHtoD_v2(b.addr(), d.as_ptr() as *const _, d.len() * 4) }.result()?;
            Ok(b)
        };
        let (a, b, c) = (up(&case.a)?, up(&case.b)?, up(&case.c0)?);
        let desc = case.desc([a.addr(), b.addr(), c.addr(), 0]);
        prepared.push((case, desc, [a, b, c]));
    }
    let out = std::io::stdout();
    writeln!(out.lock(), "ready")?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["run", i, iters] => {
                let (case, desc, bufs) = &prepared[i.parse::<usize>()?];
                let iters: usize = iters.parse()?;
                let start = Instant::now();
                for _ in 0..iters {
                    // SAFETY: the client's own matrices.
                    unsafe { blas.sgemm(desc)? };
                }
                stream.sync()?;
                let us = start.elapsed().as_secs_f64() * 1e6;
                let mut c = vec![0.0f32; case.c0.len()];
                // SAFETY: C holds this many floats.
                unsafe { cudarc::driver::sys::cuMemcpyDtoH_v2(c.as_mut_ptr() as *mut _, bufs[2].addr(), c.len() * 4) }
                    .result()?;
                let err = case.error(&c, &case.reference());
                writeln!(out.lock(), "done {us} {err}")?;
            }
            ["quit"] => break,
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// MPS measurements: per shape index, per R, the median wall time (µs) for each of R clients to
/// run its GEMM `iters` times, divided by `iters`; and the worst client error seen.
pub struct Sweep {
    pub times: Vec<Vec<(usize, f64)>>,
    pub worst_error: f64,
}

fn daemon(cmd: &str) -> Result<()> {
    let mut c = Command::new("nvidia-cuda-mps-control");
    c.env("CUDA_MPS_PIPE_DIRECTORY", PIPE).env("CUDA_MPS_LOG_DIRECTORY", LOG);
    if cmd == "start" {
        let st = c.arg("-d").status().context("running nvidia-cuda-mps-control -d")?;
        ensure!(st.success(), "nvidia-cuda-mps-control -d failed: {st}");
    } else {
        let mut ch = c.stdin(Stdio::piped()).spawn().context("running nvidia-cuda-mps-control")?;
        ch.stdin.take().expect("piped").write_all(b"quit\n")?;
        ch.wait()?;
    }
    Ok(())
}

/// Runs the MPS sweep in this process, which must not have created a CUDA context yet.
pub fn sweep(shapes: &[(u32, u32, u32)], rs: &[usize], iters: usize, reps: usize) -> Result<Sweep> {
    std::fs::create_dir_all(PIPE)?;
    std::fs::create_dir_all(LOG)?;
    daemon("start")?;
    let result = (|| -> Result<Sweep> {
        let max_r = rs.iter().copied().max().unwrap_or(0);
        let shape_arg: Vec<String> = shapes.iter().map(|(m, n, k)| format!("{m},{n},{k}")).collect();
        let exe = std::env::current_exe()?;
        let mut clients: Vec<Client> = (0..max_r)
            .map(|_| -> Result<Client> {
                let mut child = Command::new(&exe)
                    .args(["bench", "mps-client", "--shapes", &shape_arg.join(";")])
                    .env("CUDA_MPS_PIPE_DIRECTORY", PIPE)
                    .env("CUDA_MPS_LOG_DIRECTORY", LOG)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let stdin = child.stdin.take().expect("piped");
                let stdout = BufReader::new(child.stdout.take().expect("piped"));
                Ok(Client { child, stdin, stdout })
            })
            .collect::<Result<_>>()?;
        for c in &mut clients {
            let mut l = String::new();
            c.stdout.read_line(&mut l)?;
            ensure!(l.trim() == "ready", "an MPS client failed to start: {l:?}");
        }
        let mut worst = 0.0f64;
        let mut times = Vec::new();
        for si in 0..shapes.len() {
            let mut row = Vec::new();
            for &r in rs {
                let mut t = Vec::new();
                for _ in 0..reps + 1 {
                    for c in clients.iter_mut().take(r) {
                        writeln!(c.stdin, "run {si} {iters}")?;
                    }
                    let mut slowest = 0.0f64;
                    for c in clients.iter_mut().take(r) {
                        let mut l = String::new();
                        c.stdout.read_line(&mut l)?;
                        let w: Vec<&str> = l.split_whitespace().collect();
                        ensure!(w.len() == 3 && w[0] == "done", "MPS client answered {l:?}");
                        slowest = slowest.max(w[1].parse()?);
                        worst = worst.max(w[2].parse()?);
                    }
                    t.push(slowest / iters as f64);
                }
                t.remove(0); // warm-up
                row.push((r, median(&mut t)));
            }
            times.push(row);
        }
        for c in &mut clients {
            let _ = writeln!(c.stdin, "quit");
            let _ = c.child.wait();
        }
        Ok(Sweep { times, worst_error: worst })
    })();
    let stopped = daemon("quit");
    let s = result?;
    stopped?;
    Ok(s)
}
