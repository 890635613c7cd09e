// The cluster forward for irnn_half with HP = 256 (one translation unit per
// type and HP, so the build compiles them in parallel). Built for every
// architecture of the build; selected only where clusters launch. The
// clusters per wave are queried on float's (fwd_cluster_occupancy).
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error launch_fwd_cluster<irnn_half, 256, 1>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_cluster<irnn_half, 256, 2>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_cluster<irnn_half, 256, 4>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_cluster<irnn_half, 256, 8>(
    const RegFwdParams<irnn_half>&, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
