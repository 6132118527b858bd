#include "table_slots.h"

#include <c10/util/Exception.h>

#include <unordered_map>
#include <vector>

#include "python_entry.h"

namespace pytrainer {
namespace {

struct Slot {
  std::vector<SlotTable> tables;   // by launch
  std::vector<SlotTable> retired;  // replaced while a captured graph may read them
  bool capturable = false;
};

struct Slots {
  int64_t next = 0;
  std::unordered_map<int64_t, Slot> tables;
};

// Never destroyed: freeing CUDA memory during static destruction at exit can run
// after the CUDA runtime is gone.
Slots& slots() {
  static auto* const instance = new Slots();
  return *instance;
}

// A live slot; hold table_slots_mutex().
Slot& live_slot(int64_t slot) {
  const auto it = slots().tables.find(slot);
  TORCH_CHECK(it != slots().tables.end(), "pytrainer: table slot ", slot, " was released");
  return it->second;
}

}  // namespace

std::mutex& table_slots_mutex() {
  static auto* const mutex = new std::mutex();
  return *mutex;
}

int64_t new_table_slot() {
  std::lock_guard<std::mutex> lock(table_slots_mutex());
  const int64_t slot = slots().next++;
  slots().tables[slot];
  return slot;
}

void release_table_slot(int64_t slot) {
  Slot freed;  // destroyed after the lock is released
  {
    std::lock_guard<std::mutex> lock(table_slots_mutex());
    const auto it = slots().tables.find(slot);
    if (it == slots().tables.end()) return;
    freed = std::move(it->second);
    slots().tables.erase(it);
  }
}

int64_t live_table_slots() {
  std::lock_guard<std::mutex> lock(table_slots_mutex());
  return static_cast<int64_t>(slots().tables.size());
}

void check_table_slot(const char* op, int64_t slot) {
  if (slot == kNoTableSlot) return;
  std::lock_guard<std::mutex> lock(table_slots_mutex());
  TORCH_CHECK(slots().tables.count(slot) != 0, op, ": table_slot=", slot,
              " is not a live slot; pass -1 (no slot) or a slot from "
              "pytrainer._C.new_table_slot() that has not been released");
}

void set_table_slot_capturable(int64_t slot, bool capturable) {
  std::lock_guard<std::mutex> lock(table_slots_mutex());
  live_slot(slot).capturable = capturable;
}

bool table_slot_capturable(int64_t slot) {
  std::lock_guard<std::mutex> lock(table_slots_mutex());
  return live_slot(slot).capturable;
}

bool slot_capturable_locked(int64_t slot) { return live_slot(slot).capturable; }

SlotTable& slot_table(int64_t slot, size_t launch) {
  std::vector<SlotTable>& tables = live_slot(slot).tables;
  if (tables.size() <= launch) tables.resize(launch + 1);
  return tables[launch];
}

void retire_slot_table(int64_t slot, SlotTable& table) {
  live_slot(slot).retired.push_back(std::move(table));
  table = SlotTable();
}

namespace {

const bool registered = (add_python_entry([](pybind11::module_& m) {
                           m.def("new_table_slot", &new_table_slot,
                                 "A slot for the device tables of one param group "
                                 "(see csrc/table_slots.h).");
                           m.def("release_table_slot", &release_table_slot,
                                 pybind11::arg("slot"), "Frees a slot's tables.");
                           m.def("live_table_slots", &live_table_slots,
                                 "How many slots are live (testing).");
                           m.def("set_table_slot_capturable", &set_table_slot_capturable,
                                 pybind11::arg("slot"), pybind11::arg("capturable"),
                                 "Whether the slot's group may be captured in a CUDA graph.");
                           m.def("table_slot_capturable", &table_slot_capturable,
                                 pybind11::arg("slot"), "The slot's capturable flag.");
                         }),
                         true);

}  // namespace
}  // namespace pytrainer
