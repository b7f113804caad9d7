using System.Collections.Concurrent;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Fuse;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection.Classification;
using SEmigrate.MemoryServer.MainHost;

namespace SEmigrate.Activities;

/// <summary>The VMs running on this main host since their switch-over: each one's manifest (which
/// pages it has, and their classes) and its pager.</summary>
public sealed class MainHostVms
{
    /// <summary><paramref name="Guest"/>, <paramref name="Ram"/> and <paramref name="Memory"/>: the guest's
    /// QEMU, the FUSE file of its RAM and what serves it, when it was a running guest; then also
    /// <paramref name="GuestName"/>, the name it goes by here (a source step finds it by it), and
    /// <paramref name="Kit"/>, its folder there; its kernel and initramfs (<paramref name="Kernel"/>, <paramref name="Initrd"/>)
    /// are kept in memory, not on disk. <paramref name="Capabilities"/>: the
    /// VM's capability at each host that holds its pages, to release them there.</summary>
    public sealed record RunningVm(Guid Vm, Guid MigrationId, SwitchedOverResult SwitchedOver, ClassificationMap Manifest, VmPager Pager, PlacementPlan Placement,
        LiveGuest? Guest = null, FuseRamFile? Ram = null, PagedRam? Memory = null, string? GuestName = null, string? Kit = null,
        IReadOnlyDictionary<string, byte[]>? Capabilities = null, byte[]? DigestKey = null, byte[]? Initrd = null, byte[]? Kernel = null)
    {
        /// <summary>The host that holds a page, from the placement's ranges.</summary>
        public static string HostOf(PlacementPlan plan, ulong pfn) =>
            plan.Assignments.FirstOrDefault(a => (long)pfn >= a.FirstPfn && (long)pfn < a.EndPfn)?.Host
            ?? throw new ArgumentOutOfRangeException(nameof(pfn), $"page 0x{pfn:x} is in no assignment");
    }

    private readonly ConcurrentDictionary<Guid, RunningVm> vms = new();

    public void Add(RunningVm vm) => vms[vm.Vm] = vm;

    public RunningVm? Find(Guid vm) => vms.GetValueOrDefault(vm);

    public IReadOnlyList<RunningVm> All => [.. vms.Values];

    public RunningVm? Remove(Guid vm) => vms.TryRemove(vm, out var gone) ? gone : null;
}
