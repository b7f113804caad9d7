using System.Globalization;
using System.Text;
using SEmigrate.Guest.Memory;

namespace SEmigrate.Introspection.Kernel;

/// <summary>The kernel's own description of itself for crash tools (KEY=VALUE lines): release, build
/// id, KASLR offset, phys_base and the addresses of the structures a walk starts from. Found in the
/// dump's VMCOREINFO note (QEMU's -device vmcoreinfo) or, failing that, by scanning guest RAM.</summary>
public sealed class VmcoreInfo
{
    private readonly Dictionary<string, string> values;

    public VmcoreInfo(string text)
    {
        values = text.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => line.Split('=', 2))
            .Where(kv => kv.Length == 2)
            .GroupBy(kv => kv[0], StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.First()[1].Trim(), StringComparer.Ordinal);
        if (!values.ContainsKey("OSRELEASE"))
        {
            throw new InvalidDataException("VMCOREINFO has no OSRELEASE");
        }
    }

    /// <summary>Where the text came from: "note" or "RAM scan at 0x...".</summary>
    public string Source { get; init; } = "";

    public string Release => values["OSRELEASE"];

    public string BuildId => values.GetValueOrDefault("BUILD-ID", "");

    public bool Has(string key) => values.ContainsKey(key);

    public string Get(string key) =>
        values.TryGetValue(key, out var v) ? v : throw new KeyNotFoundException($"VMCOREINFO has no {key}");

    public ulong Symbol(string name) => ulong.Parse(Get($"SYMBOL({name})"), NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    public long Number(string name) => long.Parse(Get($"NUMBER({name})"), CultureInfo.InvariantCulture);

    public long Length(string name) => long.Parse(Get($"LENGTH({name})"), CultureInfo.InvariantCulture);

    public ulong KernelOffset => ulong.Parse(Get("KERNELOFFSET"), NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    /// <summary>From the ELF dump's VMCOREINFO note, else by scanning guest RAM for it. In RAM anyone in
    /// the guest can write such a text: with <paramref name="buildId"/> (the kernel file's), only one
    /// carrying that build id counts, and one planted before it is passed over.</summary>
    public static VmcoreInfo Find(GuestMemory memory, string buildId = "")
    {
        if (memory.Path.Length > 0 && FromNote(memory.Path) is { } note)
        {
            return note;
        }
        var passed = 0;
        return FromRam(memory, buildId, ref passed)
            ?? throw new InvalidDataException(passed == 0
                ? "no VMCOREINFO found (no ELF note, no OSRELEASE= in guest RAM): not a Linux guest?"
                : $"no VMCOREINFO found with the kernel's build id {buildId} in guest RAM ({passed} with another or none: planted, or another kernel): not trusted");
    }

    private static VmcoreInfo? FromNote(string path)
    {
        using var stream = File.OpenRead(path);
        var head = new byte[(int)Math.Min(stream.Length, 1 << 20)];
        stream.ReadExactly(head);
        if (!Elf64.IsElf64(head))
        {
            return null;
        }
        foreach (var h in Elf64.ProgramHeaders(head).Where(h => h.Type == Elf64.PtNote))
        {
            foreach (var n in Elf64.Notes(head, h.Offset, h.FileSize).Where(n => n.Name == "VMCOREINFO"))
            {
                var text = Encoding.ASCII.GetString(head, (int)n.DescriptorOffset, n.DescriptorSize);
                if (text.Contains("OSRELEASE=", StringComparison.Ordinal))
                {
                    return new VmcoreInfo(text.TrimEnd('\0')) { Source = "ELF note" };
                }
            }
        }
        return null;
    }

    /// <summary>vmcoreinfo_data is one page of text starting with OSRELEASE=; it needs KERNELOFFSET
    /// and init_top_pgt to count (an unrelated "OSRELEASE=" elsewhere does not).</summary>
    private static VmcoreInfo? FromRam(GuestMemory memory, string buildId, ref int passed)
    {
        var needle = "OSRELEASE="u8;
        foreach (var range in memory.Ranges)
        {
            for (var pfn = range.FirstPfn; pfn < range.FirstPfn + range.PresentPages; pfn++)
            {
                var page = memory.Page(pfn);
                var at = page.IndexOf(needle);
                if (at < 0)
                {
                    continue;
                }
                var tail = page[at..];
                var end = tail.IndexOf((byte)0);
                var text = Encoding.ASCII.GetString(end < 0 ? tail : tail[..end]);
                if (text.Contains("KERNELOFFSET=", StringComparison.Ordinal) && text.Contains("SYMBOL(init_top_pgt)=", StringComparison.Ordinal))
                {
                    var found = new VmcoreInfo(text) { Source = $"RAM scan at 0x{(pfn << GuestMemory.PageShift) + (ulong)at:x}" };
                    if (buildId.Length == 0 || string.Equals(found.BuildId, buildId, StringComparison.OrdinalIgnoreCase))
                    {
                        return found;
                    }
                    passed++;
                }
            }
        }
        return null;
    }
}
