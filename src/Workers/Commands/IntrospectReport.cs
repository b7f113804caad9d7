using System.Text.Json;
using SEmigrate.Introspection;
using SEmigrate.Introspection.Classification;

namespace SEmigrate.Workers.Commands;

/// <summary>What `semigrate guest introspect --json` prints: one object scripts can rely on.</summary>
public sealed record IntrospectReport(
    string Release,
    string BuildId,
    IReadOnlyList<IntrospectReport.Task> Tasks,
    IReadOnlyList<IntrospectReport.Zone> Zones,
    IReadOnlyList<IntrospectReport.Process> Processes,
    IntrospectReport.ClassCounts Classes,
    ulong GuestPages,
    IReadOnlyList<string> Diagnostics,
    double ProfileSeconds,
    double Seconds)
{
    public sealed record Task(int Pid, string Comm);

    public sealed record Zone(int Node, string Name, ulong FreePages, long NrFreePages, bool Trusted);

    public sealed record Process(int Pid, string Comm, int Pages);

    public sealed record ClassCounts(ulong Zero, ulong Plain, ulong Sealed);

    public static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web);

    public static IntrospectReport From(GuestIntrospection r, ClassificationMap map, double profileSeconds, double seconds) => new(
        r.Symbols?.Release ?? "",
        r.Symbols?.BuildId ?? "",
        [.. r.Tasks.Select(t => new Task(t.Pid, t.Comm))],
        [.. r.Zones.Select(z => new Zone(z.Node, z.Name, z.FreePagesWalked, z.NrFreePages, z.Trusted))],
        [.. r.Processes.Select(p => new Process(p.Task.Pid, p.Task.Comm, p.Pfns.Length))],
        new ClassCounts(map.Zero, map.Plain, map.Sealed),
        map.GuestPages,
        r.Diagnostics,
        profileSeconds,
        seconds);

    public static void WriteText(GuestIntrospection r, ClassificationMap map, TextWriter o)
    {
        if (r.Symbols is { } s)
        {
            o.WriteLine($"kernel     {s.Release} (build {s.BuildId}; VMCOREINFO from {s.VmcoreInfoSource}; {s.KallsymsCount} kallsyms; KASLR offset 0x{s.KernelOffset:x})");
        }
        o.WriteLine($"tasks      {r.Tasks.Count}{(r.TaskListComplete ? "" : " (list incomplete)")}");
        foreach (var z in r.Zones)
        {
            o.WriteLine($"zone       node {z.Node} {z.Name,-8} {z.FreePagesWalked,9} free pages walked, NR_FREE_PAGES {z.NrFreePages,9}  {(z.Trusted ? "ok" : "NOT TRUSTED")}");
        }
        foreach (var p in r.Processes)
        {
            o.WriteLine($"process    {p.Task.Comm,-16} pid {p.Task.Pid,-6} {p.Pfns.Length,9} pages{(p.Problem is null ? "" : "  (incomplete)")}");
        }
        o.WriteLine($"classes    zero {map.Zero}, plain {map.Plain}, sealed {map.Sealed} (of {map.GuestPages} guest pages)");
        foreach (var d in r.Diagnostics)
        {
            o.WriteLine($"diagnostic {d}");
        }
    }
}
