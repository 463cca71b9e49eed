//! Dynamic batching, as Triton does it: requests for one model that arrive together are run
//! as one inference when the model has a dynamic batch dimension (the first
//! dimension of every input and output is `-1`). Rows are concatenated along that dimension
//! (row-major bytes: a plain concatenation) and the outputs are split back by row counts, as
//! zero-copy slices of the one response.
//!
//! Only requests that agree on everything but the row count share a batch (same input names,
//! datatypes and trailing dimensions, same outputs asked for). When a batched run fails with
//! anything but `Unavailable`, each request is run on its own, so one caller's bad input never
//! fails another's request.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::error::{Reply, WorkerError, unavailable};
use super::options::BatchPolicy;
use super::supervisor::Supervisor;
use crate::tensor::{ModelSignature, Tensor};

pub(super) struct Job {
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    rows: usize,
    reply: oneshot::Sender<Reply>,
}

/// Requests queued for the batcher before callers wait.
const QUEUE: usize = 1024;

/// Whether the model can batch at all: every input and output has a dynamic first dimension.
pub(super) fn model_batches(signature: &ModelSignature) -> bool {
    let dynamic_first = |shape: &[i64]| shape.first() == Some(&-1);
    !signature.inputs.is_empty()
        && signature.inputs.iter().all(|s| dynamic_first(&s.shape))
        && signature.outputs.iter().all(|s| dynamic_first(&s.shape))
}

/// The request's row count, when it can join a batch (every input has the same first
/// dimension, at least one row).
fn rows(inputs: &[Tensor]) -> Option<usize> {
    let first = inputs.first()?.shape.first().copied()?;
    (first > 0 && inputs.iter().all(|t| t.shape.first() == Some(&first))).then_some(first)
}

/// What requests must share to share a batch.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    outputs: Vec<String>,
    inputs: Vec<(String, u8, Vec<usize>)>,
}

fn key(job: &Job) -> Key {
    let mut inputs: Vec<_> = job
        .inputs
        .iter()
        .map(|t| (t.name.clone(), t.dtype.code(), t.shape[1..].to_vec()))
        .collect();
    inputs.sort();
    Key {
        outputs: job.outputs.clone(),
        inputs,
    }
}

/// The handle `Worker::infer` queues requests on.
pub(super) struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    pub(super) fn start(
        supervisor: Weak<Supervisor>,
        policy: BatchPolicy,
        concurrency: usize,
    ) -> Batcher {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(gather(supervisor, jobs, policy, concurrency));
        Batcher { queue }
    }

    /// Runs the request in a batch; `Err(inputs)` when it cannot join one (run it alone).
    pub(super) async fn submit(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> Result<Reply, Vec<Tensor>> {
        let Some(rows) = rows(&inputs) else {
            return Err(inputs);
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            outputs,
            rows,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.queue.send(job).await {
            return Err(job.inputs);
        }
        Ok(answer
            .await
            .unwrap_or_else(|_| Err(unavailable("the batcher stopped (worker gone)"))))
    }
}

/// Collects requests into batches. A batch is sent as soon as the worker has a free session
/// (`concurrency` batches run at once): under light load a request goes alone, at once; under
/// load, requests queue while the sessions are busy and leave together — the batch grows with
/// the load, not with a fixed delay. `window` adds an optional wait for more rows once a
/// session is free (Triton's `max_queue_delay`).
async fn gather(
    supervisor: Weak<Supervisor>,
    mut jobs: mpsc::Receiver<Job>,
    policy: BatchPolicy,
    concurrency: usize,
) {
    let sessions = Arc::new(Semaphore::new(concurrency.max(1)));
    while let Some(first) = jobs.recv().await {
        let mut total = first.rows;
        let mut batch = vec![first];
        let mut open = true;
        // Wait for a free session, taking in whatever arrives meanwhile.
        let permit = loop {
            tokio::select! {
                permit = Arc::clone(&sessions).acquire_owned() => break permit,
                job = jobs.recv(), if open && total < policy.max_rows => match job {
                    Some(job) => {
                        total += job.rows;
                        batch.push(job);
                    }
                    None => open = false,
                },
            }
        };
        let Ok(permit) = permit else { return };
        if !policy.window.is_zero() && open {
            let deadline = tokio::time::Instant::now() + policy.window;
            while total < policy.max_rows {
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => {
                            total += job.rows;
                            batch.push(job);
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        while total < policy.max_rows {
            match jobs.try_recv() {
                Ok(job) => {
                    total += job.rows;
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let mut groups: HashMap<Key, Vec<Job>> = HashMap::new();
        for job in batch {
            groups.entry(key(&job)).or_default().push(job);
        }
        let supervisor = supervisor.clone();
        // One permit for the whole window's groups: usually there is one group.
        tokio::spawn(async move {
            for (_, group) in groups {
                run_group(supervisor.clone(), group).await;
            }
            drop(permit);
        });
    }
}

async fn run_group(supervisor: Weak<Supervisor>, group: Vec<Job>) {
    let Some(sup) = supervisor.upgrade() else {
        return;
    };
    if group.len() == 1 {
        for job in group {
            let reply = sup.infer_now(job.inputs, job.outputs).await;
            let _ = job.reply.send(reply);
        }
        return;
    }
    let total: usize = group.iter().map(|j| j.rows).sum();
    let merged = match concat(&group, total) {
        Some(m) => m,
        None => return run_each(&sup, group).await,
    };
    let outputs = group[0].outputs.clone();
    match sup.infer_now(merged, outputs).await {
        Ok(tensors) => match split(&tensors, &group, total) {
            Some(parts) => {
                sup.batched
                    .fetch_add(group.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for (job, part) in group.into_iter().zip(parts) {
                    let _ = job.reply.send(Ok(part));
                }
            }
            None => run_each(&sup, group).await,
        },
        Err(e @ WorkerError::Unavailable { .. }) => {
            for job in group {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Err(_) => run_each(&sup, group).await,
    }
}

async fn run_each(sup: &Supervisor, group: Vec<Job>) {
    for job in group {
        let reply = sup.infer_now(job.inputs, job.outputs).await;
        let _ = job.reply.send(reply);
    }
}

/// One tensor per input name: the jobs' rows one after the other.
fn concat(group: &[Job], total: usize) -> Option<Vec<Tensor>> {
    let first = &group[0];
    let mut merged = Vec::with_capacity(first.inputs.len());
    for t in &first.inputs {
        let mut data = Vec::with_capacity(t.data.len() / first.rows * total);
        for job in group {
            let part = job.inputs.iter().find(|u| u.name == t.name)?;
            data.extend_from_slice(&part.data);
        }
        let mut shape = t.shape.clone();
        shape[0] = total;
        merged.push(Tensor::new(&t.name, t.dtype, shape, data.into()).ok()?);
    }
    Some(merged)
}

/// Each job's rows of every output, as slices of the batched output.
fn split(tensors: &[Tensor], group: &[Job], total: usize) -> Option<Vec<Vec<Tensor>>> {
    let mut parts: Vec<Vec<Tensor>> = group.iter().map(|_| Vec::new()).collect();
    for t in tensors {
        if t.shape.first() != Some(&total) || t.data.len() % total != 0 {
            return None;
        }
        let row_bytes = t.data.len() / total;
        let mut offset = 0;
        for (job, out) in group.iter().zip(parts.iter_mut()) {
            let len = job.rows * row_bytes;
            let mut shape = t.shape.clone();
            shape[0] = job.rows;
            let data = t.data.slice(offset..offset + len);
            out.push(Tensor::new(&t.name, t.dtype, shape, data).ok()?);
            offset += len;
        }
    }
    Some(parts)
}
