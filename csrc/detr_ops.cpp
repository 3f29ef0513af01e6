// The Python extension module detr_ops._C.
//
// Importing it loads the whole shared object, whose static initialisers run every
// TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in csrc/ops: that is how the torch.ops.detr_ops.*
// operators come to exist. The module itself only exposes what is not a torch op: the numpy-facing
// functions (see bindings/) and a description of what was compiled in.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/version.h>

#ifdef DETR_OPS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "bindings/bindings.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = TORCH_VERSION;
#ifdef DETR_OPS_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string((CUDART_VERSION % 1000) / 10);
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
#endif
  // at::parallel_for only runs threads where ATen/Parallel.h defines INTRA_OP_PARALLEL: with an
  // OpenMP torch, that needs this extension compiled with -fopenmp (setup.py adds it).
#ifdef INTRA_OP_PARALLEL
  info["parallel"] = true;
#else
  info["parallel"] = false;
#endif
#ifdef NDEBUG
  info["debug"] = false;
#else
  info["debug"] = true;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "detr_ops compiled core: torch operator registrations and numpy-facing functions";
  m.def("build_info", &build_info,
        "What this build contains: torch version it was compiled against, CUDA or not, CPU threads or not.");
  detr_ops::bindings::register_all(m);
}
