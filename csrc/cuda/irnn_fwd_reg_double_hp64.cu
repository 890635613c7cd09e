// The register-resident forward for double with HP = 64, 1 and 2 rows per
// block, the input projected only (IRNN_REG_FWD_VARIANTS; one translation
// unit per type and HP, so the build compiles them in parallel).
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error launch_fwd_reg<double, 64, 1>(
    const RegFwdParams<double>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_reg<double, 64, 2>(
    const RegFwdParams<double>&, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
