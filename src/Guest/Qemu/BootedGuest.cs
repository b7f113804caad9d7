namespace SEmigrate.Guest.Qemu;

/// <summary>A guest booted and dumped into Directory: memory.elf, vmlinuz, serial.log, ground truth.</summary>
public sealed record BootedGuest(string Directory, GuestSpec Spec, GroundTruth GroundTruth)
{
    public string DumpPath => Path.Combine(Directory, "memory.elf");

    public string KernelPath => Path.Combine(Directory, "vmlinuz");

    public string SerialLogPath => Path.Combine(Directory, "serial.log");
}
