// A CPU emulation of the CUDA subset the irnn_cuda kernels use, so that
// csrc/cuda/irnn_kernels.cuh and irnn_launch.cuh compile with g++ and run
// here. It defines the names csrc/cuda/irnn_platform.cuh defines for nvcc.
//
// - Every thread of a block is a real OS thread; threadIdx, blockIdx,
//   blockDim and gridDim are thread_local.
// - __syncthreads() is a std::barrier across the block's threads.
// - Dynamic shared memory is private to each block and filled with 0xFF
//   bytes (NaN for floating point) before the block runs, so a read of
//   memory nobody wrote poisons the result. Each block's lies between two
//   inaccessible pages, against one of them: its end in one block, its start
//   in the next (alternating with the launch), so an access past either end
//   faults as on a GPU, and the fault is reported (see GuardedSmem).
// - Blocks run one after another, in index order or in a permuted order
//   (emu::g_block_order_seed); the same OS threads serve every block and a
//   barrier separates blocks.
// - A cluster launch (IRNN_LAUNCH_CLUSTER) runs the blocks of a cluster at
//   the same time, each on its own threads, and clusters one after another
//   (seeded order, as blocks). irnn_map_shared_rank maps an address to the
//   same offset in the peer block's shared memory; the cluster barrier is a
//   std::barrier of the cluster's threads, split into arrive and wait.
// - Warp shuffles and __syncwarp are a per-warp exchange (see "Warp
//   collectives" below); asynchronous copies go through a shadow buffer
//   published only at irnn_cp_async_wait (see "Asynchronous copies").
// - A kernel error (a mask mismatch, a lane that never arrives, a copy never
//   waited for) stops the launch, which throws with the first error's text.
// - No votes or atomics are mapped.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define IRNN_DEVICE inline
#define IRNN_GLOBAL
#define IRNN_LAUNCH_BOUNDS(threads)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

namespace emu {

// Thrown by a thread to leave a launch that already has an error.
struct Aborted {};

// One warp collective in flight: the lanes named by `mask` write their slot,
// and once all have arrived each reads its source lane's slot.
struct WarpCollective {
  const char* op;
  unsigned mask, arrived = 0, left = 0;
  bool complete = false;
  uint64_t slot[32] = {};
};

struct WarpExchange {
  std::mutex m;
  std::condition_variable cv;
  std::vector<WarpCollective> open;
};

// What the threads of one launch share besides the block barrier.
struct LaunchState {
  std::atomic<bool> failed{false};
  std::mutex m;
  std::string error;
  std::vector<WarpExchange> warps;  // one per warp of the block
};

inline thread_local std::barrier<>* t_barrier = nullptr;
inline thread_local unsigned char* t_smem = nullptr;
inline thread_local size_t t_smem_bytes = 0;
inline thread_local LaunchState* t_launch = nullptr;
// Thread-block clusters: the blocks of a cluster run at the same time, each
// with its own threads; t_cluster_size is 0 in a launch without clusters.
inline thread_local unsigned t_cluster_size = 0;
inline thread_local unsigned t_cluster_rank = 0;
inline thread_local unsigned char* const* t_cluster_smem = nullptr;  // by rank
inline thread_local std::barrier<>* t_cluster_barrier = nullptr;
inline thread_local bool t_cluster_arrived = false;  // arrive without wait
inline thread_local std::optional<std::barrier<>::arrival_token>*
    t_cluster_token = nullptr;
inline thread_local unsigned t_warp_base = 0;  // the block's first warp

// How long a lane waits in a warp collective for the others before the
// launch fails naming the lanes that never arrived.
inline int g_warp_timeout_ms = 30000;

// Records the launch's first error and makes every thread leave.
[[noreturn]] inline void fail(const std::string& what) {
  LaunchState& L = *t_launch;
  {
    std::lock_guard<std::mutex> lock(L.m);
    if (L.error.empty())
      L.error = "block " + std::to_string(blockIdx.x) + ": " + what;
  }
  L.failed.store(true);
  throw Aborted{};
}

inline void check_not_failed() {
  if (t_launch->failed.load(std::memory_order_relaxed)) throw Aborted{};
}

inline std::string lane_list(unsigned bits) {
  std::string s;
  for (int i = 0; i < 32; ++i)
    if (bits >> i & 1u) s += (s.empty() ? "" : ",") + std::to_string(i);
  return "{" + s + "}";
}

inline std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof(b), "0x%08x", v);
  return b;
}

// One lane's part in a warp collective `op` over `mask`: publishes `value`
// and returns lane `src`'s value (its own when src < 0). Masks must match
// among the lanes, the caller and the source must be in the mask, and every
// lane of the mask must arrive within g_warp_timeout_ms. A lane that starts
// a collective while another collective naming it is open is a mismatch
// (stricter than CUDA, which allows overlapping partial masks in some
// orders; the kernels use one mask per collective).
inline uint64_t warp_collective(const char* op, unsigned mask, uint64_t value,
                                int src) {
  check_not_failed();
  const unsigned tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const unsigned live_lanes = std::min(32u, blockDim.x - warp * 32);
  const unsigned live = live_lanes == 32 ? ~0u : (1u << live_lanes) - 1;
  auto where = [&] {  // built only for an error message
    return "warp " + std::to_string(warp) + " lane " + std::to_string(lane) +
           " " + op + "(mask " + hex(mask) + ")";
  };
  if (!(mask >> lane & 1u)) fail(where() + ": the calling lane is not in the mask");
  if (mask & ~live)
    fail(where() + ": the mask names lanes " + lane_list(mask & ~live) +
         " that the block does not have");
  if (src >= 0 && !(mask >> src & 1u))
    fail(where() + ": source lane " + std::to_string(src) + " is not in the mask");
  WarpExchange& W = t_launch->warps[t_warp_base + warp];
  std::unique_lock<std::mutex> lock(W.m);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(g_warp_timeout_ms);
  auto wait_step = [&](const char* waiting_for) {
    if (W.cv.wait_for(lock, std::chrono::milliseconds(20)) ==
            std::cv_status::timeout &&
        std::chrono::steady_clock::now() > deadline) {
      std::string missing;
      for (const auto& c : W.open)
        if (c.mask & ~c.arrived & mask)
          missing = ": lanes " + lane_list(c.mask & ~c.arrived) +
                    " never arrived at " + c.op + "(mask " + hex(c.mask) + ")";
      lock.unlock();
      fail(where() + ": timed out after " + std::to_string(g_warp_timeout_ms) +
           " ms waiting for " + waiting_for + missing);
    }
    if (t_launch->failed.load()) throw Aborted{};
  };
  WarpCollective* mine = nullptr;
  while (!mine) {
    WarpCollective* overlap = nullptr;
    for (auto& c : W.open)
      if (c.mask & mask) overlap = &c;
    if (!overlap) {
      W.open.push_back(WarpCollective{op, mask});
      mine = &W.open.back();
    } else if (!overlap->complete && overlap->mask == mask &&
               std::strcmp(overlap->op, op) == 0) {
      mine = overlap;
    } else if (!overlap->complete && (overlap->mask >> lane & 1u)) {
      const std::string other = std::string(overlap->op) + "(mask " +
                                hex(overlap->mask) + ") of lanes " +
                                lane_list(overlap->arrived);
      lock.unlock();
      fail(where() + ": mask or operation mismatch: lane " +
           std::to_string(lane) + " is expected in " + other);
    } else {
      wait_step("an earlier collective to finish");
    }
  }
  mine->slot[lane] = value;
  mine->arrived |= 1u << lane;
  if (mine->arrived == mine->mask) {
    mine->complete = true;
    W.cv.notify_all();
  }
  // Other collectives may be appended while waiting, so `mine` is found
  // again after each wait.
  while (!mine->complete) {
    wait_step("the other lanes");
    mine = nullptr;
    for (auto& c : W.open)
      if (c.mask == mask && (c.arrived >> lane & 1u)) mine = &c;
  }
  const uint64_t result = mine->slot[src < 0 ? lane : src];
  mine->left |= 1u << lane;
  if (mine->left == mine->mask) {
    W.open.erase(W.open.begin() + (mine - W.open.data()));
    W.cv.notify_all();
  }
  return result;
}

// Asynchronous copies of this thread: each holds the source bytes read at
// issue until a wait publishes them into shared memory.
struct PendingCopy {
  unsigned char* dst;
  std::vector<unsigned char> bytes;
  int64_t group;  // -1 until committed
};
inline thread_local std::vector<PendingCopy> t_copies;
inline thread_local int64_t t_groups_committed = 0;

// Launch limits of the emulated device (set from the property table): a
// launch may use g_smem_default bytes of dynamic shared memory, or up to
// g_smem_limit once IRNN_SET_MAX_SMEM raised its kernel's attribute.
inline int64_t g_smem_default = 48 * 1024;
inline int64_t g_smem_limit = 48 * 1024;
inline int64_t g_smem_opted_in = 0;
inline int g_max_threads = 1024;
// 0: blocks run in index order; otherwise a permutation seeded with it.
inline unsigned g_block_order_seed = 0;
inline int64_t g_launches = 0;


// The dynamic shared memory of a launch's blocks, each between inaccessible
// pages: [guard][block 0's pages][guard][block 1's pages][guard]... A block's
// bytes sit at the end of its pages when (block + launch) is even, else at
// the start, so that over a launch of two blocks or more, and over two
// launches, a kernel that reads or writes past either end of its shared
// memory touches a guard page. The fault is reported by a SIGSEGV handler
// (the block and the distance from its memory), which then hands the signal
// to the handler before it (Python's faulthandler, or the default), so the
// process still dies. Bytes between the rounded-up size and the pages' edge
// are outside the block too; irnn_check_smem catches those at byte
// precision for the accessors that call it.
class GuardedSmem {
 public:
  GuardedSmem(unsigned nblocks, size_t bytes, int64_t launch)
      : nblocks_(nblocks), bytes_(bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    span_ = (bytes + page - 1) / page * page;
    stride_ = span_ + page;
    total_ = page + stride_ * nblocks;
    void* m = mmap(nullptr, total_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
      throw std::runtime_error("emu: could not map " + std::to_string(total_) +
                               " bytes of shared memory");
    base_ = static_cast<unsigned char*>(m);
    for (unsigned b = 0; b < nblocks; ++b) {
      unsigned char* pages = base_ + page + stride_ * b;
      if (span_ && mprotect(pages, span_, PROT_READ | PROT_WRITE) != 0) {
        munmap(base_, total_);
        throw std::runtime_error("emu: mprotect of shared memory failed");
      }
      const bool at_end = (b + static_cast<uint64_t>(launch)) % 2 == 0;
      blocks_.push_back(pages + (at_end ? span_ - bytes : 0));
      std::memset(blocks_.back(), 0xFF, bytes);
    }
    install_handler();
    current().store(this);
  }
  ~GuardedSmem() {
    current().store(nullptr);
    munmap(base_, total_);
  }
  GuardedSmem(const GuardedSmem&) = delete;
  GuardedSmem& operator=(const GuardedSmem&) = delete;

  const std::vector<unsigned char*>& blocks() const { return blocks_; }

 private:
  static std::atomic<GuardedSmem*>& current() {
    static std::atomic<GuardedSmem*> arena{nullptr};
    return arena;
  }
  static struct sigaction& previous() {
    static struct sigaction old {};
    return old;
  }

  static void install_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
      struct sigaction sa {};
      sa.sa_sigaction = on_fault;
      sa.sa_flags = SA_SIGINFO;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGSEGV, &sa, &previous());
    });
  }

  // Describes a fault in the arena's guard pages, then restores the handler
  // before this one and returns: the access faults again, and that handler
  // (or the default action) ends the process.
  static void on_fault(int sig, siginfo_t* info, void*) {
    const GuardedSmem* a = current().load();
    const auto* addr = static_cast<const unsigned char*>(info->si_addr);
    if (a && addr >= a->base_ && addr < a->base_ + a->total_) {
      char msg[400];
      int n = std::snprintf(msg, sizeof msg,
                            "\nemu: a shared memory access outside the "
                            "block's dynamic shared memory of %zu bytes, at",
                            a->bytes_);
      for (unsigned b = 0; b < a->nblocks_ && n < 300; ++b) {
        const unsigned char* lo = a->blocks_[b];
        const unsigned char* hi = lo + a->bytes_;
        if ((addr >= hi && addr < hi + a->stride_) ||
            (addr < lo && addr + a->stride_ >= lo))
          n += std::snprintf(msg + n, sizeof msg - n,
                             " byte %lld of block %u's (%s);",
                             static_cast<long long>(addr - lo), b,
                             addr < lo ? "before its start" : "past its end");
      }
      n += std::snprintf(msg + n, sizeof msg - n,
                         " thread %u; a GPU faults there\n",
                         threadIdx.x);
      if (write(2, msg, static_cast<size_t>(n)) < 0) {
      }
    }
    sigaction(sig, &previous(), nullptr);
  }

  unsigned nblocks_;
  size_t bytes_, span_ = 0, stride_ = 0, total_ = 0;
  unsigned char* base_ = nullptr;
  std::vector<unsigned char*> blocks_;
};

struct Worker {
  const std::function<void()>* body;
  std::barrier<>* block_barrier;    // this thread's block's
  std::barrier<>* cluster_barrier;  // every thread of the launch's
  const std::vector<unsigned char*>* smem;  // each block's
  size_t smem_bytes;
  const std::vector<unsigned>* order;  // of the clusters
  dim3 grid, block;
  unsigned tid, rank, cluster;  // cluster: blocks per cluster (0: none)
  LaunchState* state;
};

inline void* worker_main(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  threadIdx = dim3(w.tid);
  blockDim = w.block;
  gridDim = w.grid;
  t_barrier = w.block_barrier;
  t_launch = w.state;
  t_smem_bytes = w.smem_bytes;
  t_cluster_size = w.cluster;
  t_cluster_rank = w.rank;
  t_cluster_barrier = w.cluster_barrier;
  t_cluster_arrived = false;
  std::optional<std::barrier<>::arrival_token> token;
  t_cluster_token = &token;
  const unsigned per_cluster = w.cluster ? w.cluster : 1;
  t_warp_base = w.rank * ((w.block.x + 31) / 32);
  for (unsigned q : *w.order) {
    const unsigned b = q * per_cluster + w.rank;
    blockIdx = dim3(b % w.grid.x, (b / w.grid.x) % w.grid.y,
                    b / (w.grid.x * w.grid.y));
    t_smem = (*w.smem)[b];
    t_cluster_smem = w.smem->data() + static_cast<size_t>(q) * per_cluster;
    t_copies.clear();
    t_groups_committed = 0;
    try {
      check_not_failed();
      (*w.body)();
      if (t_cluster_arrived)
        fail("thread " + std::to_string(w.tid) +
             " ended after irnn_cluster_arrive without irnn_cluster_wait");
      // The block (the cluster) is done before the next starts.
      w.cluster_barrier->arrive_and_wait();
      if (!t_copies.empty())
        fail("thread " + std::to_string(w.tid) + " ended with " +
             std::to_string(t_copies.size()) +
             " asynchronous copies never waited for");
    } catch (const Aborted&) {
      // The others' barriers go on without it (a pending cluster arrival
      // first completes its phase).
      if (t_cluster_arrived) w.cluster_barrier->wait(std::move(*token));
      if (w.block_barrier != w.cluster_barrier)
        w.block_barrier->arrive_and_drop();
      w.cluster_barrier->arrive_and_drop();
      return nullptr;
    }
  }
  return nullptr;
}

// Runs `body` on every thread of grid x block; with cluster > 0, as
// clusters of `cluster` consecutive blocks that run at the same time
// (their order seeded like blocks'), else one block at a time.
inline void launch(dim3 grid, dim3 block, size_t smem,
                   const std::function<void()>& body, unsigned cluster = 0) {
  if (block.y != 1 || block.z != 1) throw std::runtime_error("emu: 1-D blocks only");
  if (block.x < 1 || static_cast<int>(block.x) > g_max_threads)
    throw std::runtime_error("emu: bad block size " + std::to_string(block.x));
  const int64_t allowed = std::max(g_smem_default, g_smem_opted_in);
  g_smem_opted_in = 0;
  if (static_cast<int64_t>(smem) > allowed)
    throw std::runtime_error("emu: " + std::to_string(smem) +
                             " bytes of shared memory exceed the " +
                             std::to_string(allowed) + " allowed");
  const unsigned nblocks = grid.x * grid.y * grid.z;
  if (nblocks == 0) return;
  const unsigned per_cluster = cluster ? cluster : 1;
  if (cluster > 0 && (grid.y != 1 || grid.z != 1 || nblocks % cluster != 0))
    throw std::runtime_error("emu: a cluster launch needs a 1-D grid of whole "
                             "clusters");
  ++g_launches;
  std::vector<unsigned> order(nblocks / per_cluster);
  std::iota(order.begin(), order.end(), 0u);
  if (g_block_order_seed != 0) {
    std::mt19937 rng(g_block_order_seed + static_cast<unsigned>(g_launches));
    std::shuffle(order.begin(), order.end(), rng);
  }
  const size_t smem_bytes = (smem + 15) / 16 * 16;
  GuardedSmem mem(nblocks, smem_bytes, g_launches);
  const unsigned nthreads = block.x * per_cluster;
  std::barrier<> cluster_barrier(nthreads);
  std::vector<std::unique_ptr<std::barrier<>>> block_barriers;
  for (unsigned r = 0; r < per_cluster && cluster > 0; ++r)
    block_barriers.push_back(std::make_unique<std::barrier<>>(block.x));
  LaunchState state;
  state.warps = std::vector<WarpExchange>(per_cluster * ((block.x + 31) / 32));
  std::vector<Worker> workers(nthreads);
  std::vector<pthread_t> threads(nthreads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 512 * 1024);
  for (unsigned t = 0; t < nthreads; ++t) {
    const unsigned rank = t / block.x;
    workers[t] = Worker{&body,
                        cluster > 0 ? block_barriers[rank].get() : &cluster_barrier,
                        &cluster_barrier, &mem.blocks(), smem_bytes, &order,
                        grid, block, t % block.x, rank, cluster, &state};
    if (pthread_create(&threads[t], &attr, worker_main, &workers[t]) != 0) {
      std::fprintf(stderr, "emu: pthread_create failed at thread %u\n", t);
      std::abort();
    }
  }
  for (unsigned t = 0; t < nthreads; ++t) pthread_join(threads[t], nullptr);
  pthread_attr_destroy(&attr);
  if (state.failed.load()) throw std::runtime_error("emu: " + state.error);
}

// One lane's shuffle: it reads lane source(lane)'s `var`, or its own when
// that is -1.
template <typename T, typename Source>
inline T shuffle(const char* op, unsigned mask, T var, int width,
                 Source source) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                "warp shuffles move at most 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail(std::string(op) + ": width " + std::to_string(width) +
         " is not a power of 2 <= 32");
  uint64_t slot = 0;
  std::memcpy(&slot, &var, sizeof(T));
  slot = warp_collective(op, mask, slot, source(static_cast<int>(threadIdx.x % 32)));
  std::memcpy(&var, &slot, sizeof(T));
  return var;
}

}  // namespace emu

inline void __syncthreads() {
  emu::check_not_failed();
  emu::t_barrier->arrive_and_wait();
  emu::check_not_failed();
}

// Warp collectives (CUDA's semantics for width and out-of-range lanes: a
// source outside the lane's width segment yields the lane's own value).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::warp_collective("__syncwarp", mask, 0, -1);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return emu::shuffle("__shfl_sync", mask, var, width, [&](int lane) {
    return (lane & ~(width - 1)) + (src_lane & (width - 1));
  });
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta,
                        int width = warpSize) {
  return emu::shuffle("__shfl_up_sync", mask, var, width, [&](int lane) {
    return lane % width >= static_cast<int>(delta)
               ? lane - static_cast<int>(delta) : -1;
  });
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta,
                          int width = warpSize) {
  return emu::shuffle("__shfl_down_sync", mask, var, width, [&](int lane) {
    return lane % width + static_cast<int>(delta) < width
               ? lane + static_cast<int>(delta) : -1;
  });
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask,
                         int width = warpSize) {
  return emu::shuffle("__shfl_xor_sync", mask, var, width, [&](int lane) {
    const int j = lane ^ lane_mask;
    return j < (lane & ~(width - 1)) + width ? j : -1;
  });
}

#define IRNN_LAUNCH(kernel, blocks, threads, smem, stream, params) \
  do {                                                             \
    (void)(stream);                                                \
    const auto irnn_params_ = (params);                            \
    emu::launch(dim3(blocks), dim3(threads), (smem),               \
                [&irnn_params_] { kernel(irnn_params_); });        \
  } while (0)

// The opt-in holds for the next launch (each launcher opts in right
// before the launch that needs it). On a GPU the kernel's limit only rises
// (irnn_raise_max_smem); holding it for one launch checks that every
// launch that needs it opts in.
#define IRNN_SET_MAX_SMEM(kernel, bytes)                                   \
  do {                                                                     \
    if (static_cast<int64_t>(bytes) > emu::g_smem_limit)                   \
      throw std::runtime_error("emu: shared memory opt-in above the limit"); \
    emu::g_smem_opted_in = static_cast<int64_t>(bytes);                    \
  } while (0)

// Every architecture of the emulation has clusters.
#define IRNN_CLUSTER_BODY(...) __VA_ARGS__

// The emulation's device is a property table: its clusters per wave come
// from there (DeviceProps::clusters_of_4, _8), never from a query.
// Every architecture's operations are emulated.
#define IRNN_KERNEL_PTX_VERSION(kernel, version) \
  do {                                           \
    *(version) = 90;                             \
  } while (0)

#define IRNN_MAX_ACTIVE_CLUSTERS(kernel, cluster, threads, smem, clusters) \
  do {                                                                    \
    (void)(cluster);                                                      \
    (void)(threads);                                                      \
    (void)(smem);                                                         \
    *(clusters) = 0;                                                      \
  } while (0)

#define IRNN_LAUNCH_CLUSTER(kernel, blocks, cluster, threads, smem, stream, \
                            params)                                         \
  do {                                                                      \
    (void)(stream);                                                         \
    const auto irnn_params_ = (params);                                     \
    emu::launch(dim3(blocks), dim3(threads), (smem),                        \
                [&irnn_params_] { kernel(irnn_params_); }, (cluster));      \
  } while (0)

namespace emu {
inline void need_cluster(const char* what) {
  if (t_cluster_size == 0)
    fail("thread " + std::to_string(threadIdx.x) + ": " + what +
         " in a launch without clusters");
}
}  // namespace emu

namespace irnn_cuda {

// Thread-block clusters (see irnn_platform.cuh). The rank is the block's
// place in its cluster; a peer's shared memory is its own block's buffer;
// the cluster barrier is a std::barrier of every thread of the cluster,
// split into its arrive and its wait.
inline unsigned irnn_cluster_rank() {
  emu::need_cluster("irnn_cluster_rank");
  return emu::t_cluster_rank;
}

template <typename T>
inline T* irnn_map_shared_rank(T* ptr, unsigned rank) {
  emu::need_cluster("irnn_map_shared_rank");
  auto* p = reinterpret_cast<unsigned char*>(ptr);
  if (p < emu::t_smem || p >= emu::t_smem + emu::t_smem_bytes)
    emu::fail("thread " + std::to_string(threadIdx.x) +
              ": irnn_map_shared_rank of an address outside the block's "
              "shared memory");
  if (rank >= emu::t_cluster_size)
    emu::fail("thread " + std::to_string(threadIdx.x) +
              ": irnn_map_shared_rank to rank " + std::to_string(rank) +
              " of a cluster of " + std::to_string(emu::t_cluster_size));
  return reinterpret_cast<T*>(emu::t_cluster_smem[rank] + (p - emu::t_smem));
}

inline void irnn_cluster_arrive() {
  emu::need_cluster("irnn_cluster_arrive");
  emu::check_not_failed();
  if (emu::t_cluster_arrived)
    emu::fail("thread " + std::to_string(threadIdx.x) +
              ": irnn_cluster_arrive twice without irnn_cluster_wait");
  emu::t_cluster_token->emplace(emu::t_cluster_barrier->arrive());
  emu::t_cluster_arrived = true;
}

inline void irnn_cluster_wait() {
  emu::need_cluster("irnn_cluster_wait");
  if (!emu::t_cluster_arrived)
    emu::fail("thread " + std::to_string(threadIdx.x) +
              ": irnn_cluster_wait without irnn_cluster_arrive");
  emu::t_cluster_barrier->wait(std::move(**emu::t_cluster_token));
  emu::t_cluster_arrived = false;
  emu::check_not_failed();
}

}  // namespace irnn_cuda

namespace irnn_cuda {

// IEEE half and bfloat16 as 16-bit patterns, converted with round to
// nearest even like __float2half_rn and __float2bfloat16_rn.
struct irnn_half {
  uint16_t bits;
};
struct irnn_bf16 {
  uint16_t bits;
};

using irnn_error = int;
using irnn_stream = void*;
constexpr irnn_error kIrnnSuccess = 0;
constexpr irnn_error kIrnnInvalidConfig = 9;  // cudaErrorInvalidConfiguration

template <typename T>
inline T* irnn_dyn_smem() {
  return reinterpret_cast<T*>(emu::t_smem);
}

// Bytes [p, p + n) lie in the block's dynamic shared memory (a GPU faults on
// an access outside it). The guard pages catch most such accesses too; this
// check is exact to the byte and reports as a launch error.
inline void irnn_check_smem(const void* p, int n) {
  const auto* b = static_cast<const unsigned char*>(p);
  if (b < emu::t_smem || b + n > emu::t_smem + emu::t_smem_bytes)
    emu::fail("thread " + std::to_string(threadIdx.x) + ": a shared memory "
              "access at byte " + std::to_string(b - emu::t_smem) + " (" +
              std::to_string(n) + " bytes) of a block's " +
              std::to_string(emu::t_smem_bytes));
}

// Asynchronous copies (cp.async): Bytes (4, 8 or 16) from global memory to
// this block's shared memory. At issue the source is read into a shadow
// buffer and the destination is filled with 0xFF (NaN); the bytes land only
// when irnn_cp_async_wait publishes their group, so a read before the wait
// sees poison. A thread that ends with copies not waited for fails the
// launch.
template <int Bytes>
inline void irnn_cp_async(void* smem_dst, const void* global_src) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16,
                "cp.async copies 4, 8 or 16 bytes");
  auto* dst = static_cast<unsigned char*>(smem_dst);
  if (dst < emu::t_smem || dst + Bytes > emu::t_smem + emu::t_smem_bytes)
    emu::fail("thread " + std::to_string(threadIdx.x) +
              ": irnn_cp_async destination is outside the block's shared memory");
  if (reinterpret_cast<uintptr_t>(smem_dst) % Bytes ||
      reinterpret_cast<uintptr_t>(global_src) % Bytes)
    emu::fail("thread " + std::to_string(threadIdx.x) + ": irnn_cp_async<" +
              std::to_string(Bytes) + "> with an unaligned address");
  const auto* src = static_cast<const unsigned char*>(global_src);
  emu::t_copies.push_back(
      emu::PendingCopy{dst, std::vector<unsigned char>(src, src + Bytes), -1});
  std::memset(dst, 0xFF, Bytes);
}

// A 4-byte copy that, where `copy` is false, reads nothing and writes 0
// (cp.async's src-size of 0): pending and published as irnn_cp_async's.
inline void irnn_cp_async_or_zero(void* smem_dst, const void* global_src,
                                  bool copy) {
  static const unsigned zero = 0;
  irnn_cp_async<4>(smem_dst, copy ? global_src : &zero);
}

// Closes the group of this thread's copies issued since the last commit.
inline void irnn_cp_async_commit() {
  ++emu::t_groups_committed;
  for (auto& c : emu::t_copies)
    if (c.group < 0) c.group = emu::t_groups_committed;
}

// Waits until at most N of this thread's committed groups are pending:
// publishes every older group. Other threads see the bytes only after a
// barrier.
template <int N>
inline void irnn_cp_async_wait() {
  const int64_t last_done = emu::t_groups_committed - N;
  auto& copies = emu::t_copies;
  for (auto& c : copies)
    if (c.group > 0 && c.group <= last_done)
      std::memcpy(c.dst, c.bytes.data(), c.bytes.size());
  copies.erase(std::remove_if(copies.begin(), copies.end(),
                              [&](const emu::PendingCopy& c) {
                                return c.group > 0 && c.group <= last_done;
                              }),
               copies.end());
}

// See irnn_platform.cuh: a register hint for nvcc, v itself here.
inline int irnn_opaque(int v) { return v; }
inline int64_t irnn_opaque(int64_t v) { return v; }

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(irnn_half v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return static_cast<float>(h);
}
inline float to_acc(irnn_bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename S>
inline S from_acc(float v);
template <>
inline float from_acc<float>(float v) { return v; }
template <>
inline irnn_half from_acc<irnn_half>(float v) {
  const _Float16 h = static_cast<_Float16>(v);
  irnn_half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
template <>
inline irnn_bf16 from_acc<irnn_bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  irnn_bf16 r;
  if (std::isnan(v))
    r.bits = static_cast<uint16_t>((u >> 16) | 0x40);
  else
    r.bits = static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
  return r;
}
// The value of the 16-bit element S in the low (high = false) or the high
// half of a 4-byte word, as float.
template <typename S>
inline float word_to_acc(uint32_t word, bool high) {
  static_assert(sizeof(S) == 2, "a 16-bit type");
  S v;
  v.bits = static_cast<uint16_t>(high ? word >> 16 : word);
  return to_acc(v);
}

template <typename S>
inline S from_acc(double v);
template <>
inline double from_acc<double>(double v) { return v; }

inline float irnn_tanh(float v) { return std::tanh(v); }
inline double irnn_tanh(double v) { return std::tanh(v); }

}  // namespace irnn_cuda
