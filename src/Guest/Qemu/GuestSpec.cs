using System.Text.RegularExpressions;

namespace SEmigrate.Guest.Qemu;

/// <summary>A process the guest's init starts: it fills MiB of memory with Marker and stays, or, when
/// Freed, frees that memory and exits (so free pages hold stale markers).</summary>
public sealed partial record GuestProcess(string Name, int MiB, string Marker, bool Freed = false)
{
    /// <summary>NAME:MIB:MARKER, as on the command line.</summary>
    public static GuestProcess Parse(string text, bool freed = false)
    {
        var parts = text.Split(':');
        if (parts.Length != 3 || !NamePattern().IsMatch(parts[0]) || !int.TryParse(parts[1], out var mib) || mib is < 1 or > 65536
            || !MarkerPattern().IsMatch(parts[2]))
        {
            throw new FormatException(
                $"'{text}' is not NAME:MIB:MARKER (NAME 1-15 of A-Za-z0-9_.-, MIB 1-65536, MARKER of A-Za-z0-9_.-)");
        }
        return new GuestProcess(parts[0], mib, parts[2], freed);
    }

    public string KitArgument => Freed ? $"free:{Name}:{MiB}:{Marker}" : $"{Name}:{MiB}:{Marker}";

    [GeneratedRegex("^[A-Za-z0-9_.-]{1,15}$")]
    private static partial Regex NamePattern();

    [GeneratedRegex("^[A-Za-z0-9_.-]{1,64}$")]
    private static partial Regex MarkerPattern();
}

/// <summary>What to boot: guest memory size, the processes its init starts, and the MiB of memory the
/// workload (deploy/guest/workload.c) checks and rewrites for ever (0: none).</summary>
public sealed record GuestSpec(int MemoryMiB, IReadOnlyList<GuestProcess> Processes, int WorkloadMiB = 0)
{
    /// <summary>A spec from the command line's words: memory ("256M"), NAME:MIB:MARKER processes that stay
    /// and ones that free their memory, the workload's MiB; a bad one throws FormatException.</summary>
    public static GuestSpec Parse(string memory, IEnumerable<string>? processes, IEnumerable<string>? freed, int workloadMiB = 0) =>
        workloadMiB < 0 ? throw new FormatException("the workload's size must not be negative")
        : new(QemuGuest.ParseMemoryMiB(memory),
        [
            .. (processes ?? []).Select(p => GuestProcess.Parse(p)),
            .. (freed ?? []).Select(p => GuestProcess.Parse(p, freed: true)),
        ], workloadMiB);

    /// <summary>The guest kit's arguments (deploy/guest/guest-kit.sh).</summary>
    public IEnumerable<string> KitArguments => Processes.Select(p => p.KitArgument).Concat(WorkloadMiB > 0 ? [$"work:{WorkloadMiB}"] : []);
}
