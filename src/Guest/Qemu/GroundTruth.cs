using System.Globalization;

namespace SEmigrate.Guest.Qemu;

/// <summary>What the guest said about itself just before the dump (its serial log): each process's
/// present PFNs from /proc/PID/pagemap and each zone's free page count from /proc/zoneinfo. Zone
/// counts move while the guest runs; the PFNs of sleeping processes do not.</summary>
public sealed record GroundTruth(string Release, IReadOnlyList<GroundTruthProcess> Processes, IReadOnlyList<GroundTruthZone> Zones)
{
    public static GroundTruth Parse(string serialLog)
    {
        var release = "";
        var processes = new Dictionary<int, (string Comm, List<ulong> Pfns, int Expected)>();
        var zones = new List<GroundTruthZone>();
        var ended = false;
        foreach (var raw in serialLog.Split('\n'))
        {
            var f = raw.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length == 0)
            {
                continue;
            }
            switch (f[0])
            {
                case "GT-PFNS" when f.Length == 4:
                    processes[int.Parse(f[1], CultureInfo.InvariantCulture)] = (f[2], [], int.Parse(f[3], CultureInfo.InvariantCulture));
                    break;
                case "GT-PFN" when f.Length >= 2 && processes.TryGetValue(int.Parse(f[1], CultureInfo.InvariantCulture), out var p):
                    p.Pfns.AddRange(f.Skip(2).Select(x => ulong.Parse(x, NumberStyles.HexNumber, CultureInfo.InvariantCulture)));
                    break;
                case "GT-ZONE" when f.Length == 3:
                    zones.Add(new GroundTruthZone(f[1], ulong.Parse(f[2], CultureInfo.InvariantCulture)));
                    break;
                case "GT-RELEASE" when f.Length == 2:
                    release = f[1];
                    break;
                case "GT-END":
                    ended = true;
                    break;
            }
        }
        if (!ended)
        {
            throw new InvalidDataException("the guest's serial log has no complete ground truth (no GT-END line)");
        }
        foreach (var (pid, p) in processes)
        {
            if (p.Pfns.Count != p.Expected)
            {
                throw new InvalidDataException($"ground truth for pid {pid}: {p.Pfns.Count} PFNs, announced {p.Expected}");
            }
        }
        return new GroundTruth(release,
            [.. processes.OrderBy(kv => kv.Key).Select(kv => new GroundTruthProcess(kv.Key, kv.Value.Comm, [.. kv.Value.Pfns.Distinct().Order()]))],
            zones);
    }
}

public sealed record GroundTruthProcess(int Pid, string Comm, IReadOnlyList<ulong> Pfns);

public sealed record GroundTruthZone(string Name, ulong FreePages);
