// The cluster forward for float with HP = 256 (one translation unit per
// type and HP, so the build compiles them in parallel). Built for every
// architecture of the build; selected only where clusters launch.
#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

template irnn_error fwd_cluster_occupancy<float, 256>(int*);

template irnn_error launch_fwd_cluster<float, 256, 1>(
    const RegFwdParams<float>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_cluster<float, 256, 2>(
    const RegFwdParams<float>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_cluster<float, 256, 4>(
    const RegFwdParams<float>&, bool, const LaunchConfig&, irnn_stream);
template irnn_error launch_fwd_cluster<float, 256, 8>(
    const RegFwdParams<float>&, bool, const LaunchConfig&, irnn_stream);

}  // namespace irnn_cuda
