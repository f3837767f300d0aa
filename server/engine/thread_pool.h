// The engine's persistent thread pool and the process-wide settings that go with it.
//
// ParallelFor splits [0, n) into at most `threads` (and 64) contiguous ranges, each run by a pool
// worker or, if that worker has not started it when the caller is done with its own, by the
// caller; a call made from inside a pool worker runs inline, so nested parallelism never
// oversubscribes the machine. Idle workers spin for a while before sleeping (SetWorkerSpin);
// TuneAllocatorForTraining keeps the activation-sized blocks that every step allocates in the heap.
#ifndef DROPNET_ENGINE_THREAD_POOL_H_
#define DROPNET_ENGINE_THREAD_POOL_H_

#include <chrono>
#include <cstdint>
#include <functional>

namespace dropnet::engine {

// Runs fn(begin, end) over a partition of [0, n) on up to `threads` threads and waits.
void ParallelFor(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn);

// How long idle pool workers spin for the next task before sleeping (default 50 µs). A worker
// that still spins takes a task at once; one that sleeps needs a wake-up, which on a virtual
// machine whose idle vCPUs halt costs tens of microseconds, and a halted vCPU also slows every
// other thread woken on it. A server that answers calls a few hundred microseconds apart keeps
// latency low with a spin longer than that gap, at the price of a core kept busy between calls
// (idle workers go to sleep when it ends). 0: sleep at once.
void SetWorkerSpin(std::chrono::microseconds spin);
std::chrono::microseconds WorkerSpin();

// Gets the workers a ParallelFor over `threads` threads will use spinning, so that it does not
// wait for them to wake up: call it when such work is about to start.
void WakeWorkers(int threads);

// Hardware threads, at least 1.
int HardwareThreads();

// Keeps activation-sized blocks (up to 32 MiB) in the malloc heap instead of a fresh mmap per
// allocation, which would page-fault every training step; free memory above 64 MiB at the top of
// the heap still goes back to the system. Programs that train call it once at start-up.
void TuneAllocatorForTraining();

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_THREAD_POOL_H_
