// Splits the world into a (data x sequence x perturbation) grid. Ranks are laid out with the
// perturbation index fastest, then sequence, then data:
//   world_rank = (d * S + s) * P + p
// so the ranks of one sequence-parallel group are neighbours (same node first).
//
//   MT_ASSIGN_OR_RETURN(ProcessGrid grid, ProcessGrid::Create(world.get(), {.data = 2}));
//   grid.data().AllReduce(...);   // the ranks with the same (s, p)
#ifndef MEMTRAIN_PARALLEL_PROCESS_GRID_H_
#define MEMTRAIN_PARALLEL_PROCESS_GRID_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace memtrain::parallel {

struct GridShape {
  int data = 1;
  int sequence = 1;
  int perturbation = 1;
  int size() const { return data * sequence * perturbation; }
};

class ProcessGrid {
 public:
  // InvalidArgument (naming parallel.*) if the product of the degrees is not world->size().
  // Collective over `world`; every rank must call it with the same shape.
  static absl::StatusOr<ProcessGrid> Create(Communicator* world, GridShape shape);

  const GridShape& shape() const { return shape_; }
  int data_rank() const { return d_; }
  int sequence_rank() const { return s_; }
  int perturbation_rank() const { return p_; }

  Communicator& world() { return *world_; }
  Communicator& data() { return *data_; }                  // same (s, p), varying d
  Communicator& sequence() { return *sequence_; }          // same (d, p), varying s
  Communicator& perturbation() { return *perturbation_; }  // same (d, s), varying p
  // Same p, varying (d, s): the ranks a block's gradients are reduced over when sequence
  // parallelism shards the tokens of each data-parallel replica (rank d * S + s).
  Communicator& data_sequence() { return *data_sequence_; }

 private:
  GridShape shape_;
  int d_ = 0, s_ = 0, p_ = 0;
  Communicator* world_ = nullptr;
  std::unique_ptr<Communicator> data_, sequence_, perturbation_, data_sequence_;
};

}  // namespace memtrain::parallel

#endif  // MEMTRAIN_PARALLEL_PROCESS_GRID_H_
