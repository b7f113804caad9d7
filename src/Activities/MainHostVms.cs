using System.Collections.Concurrent;
using SEmigrate.Contracts.Migration;
using SEmigrate.MemoryServer.MainHost;
using SEmigrate.Sealing;

namespace SEmigrate.Activities;

/// <summary>The VMs running on this main host since their switch-over: each one's memory image (the
/// pages placed here), its page table and its pager for the pages at sub-hosts.</summary>
public sealed class MainHostVms
{
    public sealed record RunningVm(Guid Vm, Guid MigrationId, SwitchedOverResult SwitchedOver, PageCodec Codec, PageTable Table, RemotePager Pager, PlacementPlan Placement, string Main)
    {
        /// <summary>The host that holds a page, from the placement's ranges.</summary>
        public string HostOf(ulong pfn) => HostOf(Placement, pfn);

        public static string HostOf(PlacementPlan plan, ulong pfn) =>
            plan.Assignments.FirstOrDefault(a => (long)pfn >= a.FirstPfn && (long)pfn < a.EndPfn)?.Host
            ?? throw new ArgumentOutOfRangeException(nameof(pfn), $"page 0x{pfn:x} is in no assignment");
    }

    private readonly ConcurrentDictionary<Guid, RunningVm> vms = new();

    public void Add(RunningVm vm) => vms[vm.Vm] = vm;

    public RunningVm? Find(Guid vm) => vms.GetValueOrDefault(vm);

    public RunningVm Get(Guid vm) => vms.TryGetValue(vm, out var running) ? running
        : throw new KeyNotFoundException($"VM {vm} does not run on this main host (no switch-over here, or the worker restarted since)");
}
