// The register-resident backward for irnn_bf16 with HP = 104 (one translation
// unit per type and HP, so the build compiles them in parallel).
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error launch_bwd_reg<irnn_bf16, 104, 1>(
    const RegBwdParams<irnn_bf16>&, bool, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_bwd_reg<irnn_bf16, 104, 2>(
    const RegBwdParams<irnn_bf16>&, bool, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_bwd_reg<irnn_bf16, 104, 4>(
    const RegBwdParams<irnn_bf16>&, bool, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_bwd_reg<irnn_bf16, 104, 8>(
    const RegBwdParams<irnn_bf16>&, bool, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
