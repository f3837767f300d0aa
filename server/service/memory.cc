#include "server/service/memory.h"

#include <malloc.h>

namespace dropnet::service {

void ConfigureAllocator() { mallopt(M_ARENA_MAX, 1); }

void ReleaseFreeMemory() { malloc_trim(0); }

}  // namespace dropnet::service
