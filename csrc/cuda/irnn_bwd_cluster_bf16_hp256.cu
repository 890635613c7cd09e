// The cluster backward for irnn_bf16 with HP = 256 (one translation unit per
// type and HP, so the build compiles them in parallel). Built for every
// architecture of the build; selected only where clusters launch.
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error launch_bwd_cluster<irnn_bf16, 256, 1>(
    const ClusterBwdParams<irnn_bf16>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_bwd_cluster<irnn_bf16, 256, 2>(
    const ClusterBwdParams<irnn_bf16>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_bwd_cluster<irnn_bf16, 256, 4>(
    const ClusterBwdParams<irnn_bf16>&, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
