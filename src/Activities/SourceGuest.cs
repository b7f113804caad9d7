using SEmigrate.Guest.Memory;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Activities;

/// <summary>A guest this host can migrate, by name: one of its guests folder (a memory dump from `guest
/// boot`, or a guest living on its own from `guest start`), or a running guest it took over as main host,
/// which then moves on from here like any other (its RAM read through its pager). <paramref name="Memory"/>:
/// the dump or RAM file; <paramref name="Kit"/>: the folder of its kernel and initramfs.</summary>
public sealed record SourceGuest(string Name, string Memory, string Kit, bool Live, MainHostVms.RunningVm? TakenOver = null)
{
    public string KernelPath => BootedGuest.KernelIn(Kit);

    public string InitrdPath => Path.Combine(Kit, "initrd.gz");

    /// <summary>Its kernel file's bytes: from its kit, or kept in memory for a guest taken over here.</summary>
    public byte[] ReadKernel() => TakenOver?.Kernel ?? File.ReadAllBytes(KernelPath);

    /// <summary>The kernel's types, for introspection (a kit's kernel caches them beside itself).</summary>
    public KernelLayout KernelLayout() =>
        TakenOver?.Kernel is { } kernel ? Introspection.Kernel.KernelLayout.FromImage(KernelImage.FromBytes(kernel, $"the kernel of {Name}")) : Introspection.Kernel.KernelLayout.Load(KernelPath);

    /// <summary>Its memory. A guest taken over here has its RAM on a FUSE file this very process serves:
    /// that is read, never mapped (see GuestMemory.OpenImageByReads).</summary>
    public GuestMemory OpenMemory() => TakenOver is null ? GuestMemory.Open(Memory) : GuestMemory.OpenImageByReads(Memory);

    /// <summary>Control of the running guest (pause, continue, device state); disposing it lets go of the
    /// control, never of the guest. A guest taken over here lends its QEMU's own connection.</summary>
    public async Task<LiveGuest> AttachAsync(CancellationToken ct) =>
        TakenOver?.Guest is { } owned ? owned.Borrowed() : await LiveGuest.AttachAsync(Kit, ct);
}
