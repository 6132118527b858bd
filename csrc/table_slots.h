// Table slots: where an optimizer keeps the device tables of its param groups.
//
// A CUDA step reads its tensors' pointers and sizes from a table in device
// memory (cuda/tensor_table.h). An optimizer takes one slot per param group
// (pytrainer._C.new_table_slot) and passes it to every call of the group's op
// (`table_slot`); the call keeps its tables there, one per launch, and reuses a
// table while its content (the key: every pointer and size in it) is unchanged.
// So a steady-state step does no table work for any number of groups, and a
// table lives until its group's content changes or the optimizer releases the
// slot: what a captured CUDA graph, which keeps reading the table's address,
// needs. Calls without a slot (table_slot = -1) share a small cache by content.
//
// A slot of a capturable group (capturable=True) may be read by a captured CUDA
// graph: a table read during a capture is marked `captured` and, when its
// group's content changes later, retired rather than freed, so the graph never
// reads freed memory; retired tables are freed with the slot.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace pytrainer {

constexpr int64_t kNoTableSlot = -1;

// A table kept in a slot: its key and the device bytes holding it.
struct SlotTable {
  std::string key;
  at::Tensor buffer;
  // CUDA: an event recorded after the upload (a cudaEvent_t, destroyed with the table)
  std::shared_ptr<void> uploaded;
  // CUDA: the stream (a cudaStream_t) that last read the table outside a capture
  const void* reader = nullptr;
  // read by a captured CUDA graph: retired instead of freed when replaced
  bool captured = false;
};

int64_t new_table_slot();
// Frees the slot's tables (the device memory returns to torch's caching allocator
// in stream order, after the kernels queued on it).
void release_table_slot(int64_t slot);
int64_t live_table_slots();

// Whether the slot's group may be captured in a CUDA graph (its optimizer's
// capturable flag; false for a new slot).
void set_table_slot_capturable(int64_t slot, bool capturable);
bool table_slot_capturable(int64_t slot);

// Clear error unless `slot` is kNoTableSlot or a live slot.
void check_table_slot(const char* op, int64_t slot);

// Guards every SlotTable; hold it while reading or replacing one.
std::mutex& table_slots_mutex();
// Table `launch` of `slot` (empty when new); `slot` must be live.
SlotTable& slot_table(int64_t slot, size_t launch);
// Whether `slot` (live) may be captured. Hold table_slots_mutex().
bool slot_capturable_locked(int64_t slot);
// Moves `table` (of live `slot`, read by a captured graph) to the slot's retired
// tables, kept until the slot is released; `table` is left empty. Hold the mutex.
void retire_slot_table(int64_t slot, SlotTable& table);

}  // namespace pytrainer
