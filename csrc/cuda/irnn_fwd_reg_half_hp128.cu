// The register-resident forward for irnn_half with HP = 128 (one translation
// unit per type and HP, so the build compiles them in parallel).
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error launch_fwd_reg<irnn_half, 128, 1>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_reg<irnn_half, 128, 2>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_reg<irnn_half, 128, 4>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_reg<irnn_half, 128, 8>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
