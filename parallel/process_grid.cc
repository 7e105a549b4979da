#include "parallel/process_grid.h"

#include "absl/strings/str_format.h"
#include "core/status.h"

namespace memtrain::parallel {

absl::StatusOr<ProcessGrid> ProcessGrid::Create(Communicator* world, GridShape shape) {
  if (shape.data < 1 || shape.sequence < 1 || shape.perturbation < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.data = %d, parallel.sequence = %d, parallel.perturbation = %d: each must be >= 1",
        shape.data, shape.sequence, shape.perturbation));
  }
  if (shape.size() != world->size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.data * parallel.sequence * parallel.perturbation = %d * %d * %d = %d but the "
        "job has %d ranks; start it with mpirun -np %d or change the degrees",
        shape.data, shape.sequence, shape.perturbation, shape.size(), world->size(), shape.size()));
  }
  ProcessGrid g;
  g.shape_ = shape;
  g.world_ = world;
  const int r = world->rank(), S = shape.sequence, P = shape.perturbation;
  g.p_ = r % P;
  g.s_ = (r / P) % S;
  g.d_ = r / (P * S);
  MT_ASSIGN_OR_RETURN(g.data_, world->Split(/*color=*/g.s_ * P + g.p_, /*key=*/g.d_));
  MT_ASSIGN_OR_RETURN(g.sequence_, world->Split(g.d_ * P + g.p_, g.s_));
  MT_ASSIGN_OR_RETURN(g.perturbation_, world->Split(g.d_ * S + g.s_, g.p_));
  MT_ASSIGN_OR_RETURN(g.data_sequence_, world->Split(g.p_, g.d_ * S + g.s_));
  return g;
}

}  // namespace memtrain::parallel
