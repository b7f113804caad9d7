namespace SEmigrate.Guest.Qemu;

/// <summary>A guest booted and dumped into Directory: memory.elf, vmlinuz, serial.log, ground truth.</summary>
public sealed record BootedGuest(string Directory, GuestSpec Spec, GroundTruth GroundTruth)
{
    public string DumpPath => DumpIn(Directory);

    public string KernelPath => KernelIn(Directory);

    /// <summary>Where a guest folder keeps its memory dump (for code that has only the folder).</summary>
    public static string DumpIn(string directory) => Path.Combine(directory, "memory.elf");

    public static string KernelIn(string directory) => Path.Combine(directory, "vmlinuz");

    public string SerialLogPath => Path.Combine(Directory, "serial.log");
}
