// The register-resident backward for double with HP = 64, one row per block
// (IRNN_REG_BWD_VARIANTS; one translation unit per type and HP, so the
// build compiles them in parallel).
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error launch_bwd_reg<double, 64, 1>(
    const RegBwdParams<double>&, bool, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
