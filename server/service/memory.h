// The server's use of the C allocator (glibc malloc).
//
// A server that trains allocates and frees large blocks: a training's private copy of the network,
// its optimizer state and gradients, the rows of a data set. The engine keeps blocks of up to
// 32 MiB in the malloc heap rather than in fresh mappings (engine::TuneAllocatorForTraining), and
// by default every thread that allocates may get a heap (an arena) of its own; malloc_trim hands
// back the free pages inside an arena but not the free space at the top of a thread's arena, so
// after a few trainings on different threads tens of megabytes stay resident unused.
// ConfigureAllocator makes every thread allocate from one heap, whose free top ReleaseFreeMemory
// (malloc_trim) returns too; the calls that allocate a lot call it when they end.
#ifndef DROPNET_SERVICE_MEMORY_H_
#define DROPNET_SERVICE_MEMORY_H_

namespace dropnet::service {

// Call once, first thing in main, before any other thread starts.
void ConfigureAllocator();

// Returns the memory that the allocator holds free to the system.
void ReleaseFreeMemory();

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_MEMORY_H_
