package reconcile

// GiB formats bytes as GiB with one decimal, as plans say GPU memory (for
// the executor's messages, which must read like the plan's).
func GiB(b uint64) string { return gib(b) }

// GPUWord names a pool's devices as plans do: "GPU 0", "GPUs 0,1".
func GPUWord(devices []int) string { return gpuWord(devices) }
