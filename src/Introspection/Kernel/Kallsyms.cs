using System.Buffers.Binary;
using System.Text;

namespace SEmigrate.Introspection.Kernel;

/// <summary>Decodes the kernel's compressed symbol table (kallsyms) out of guest memory, with the
/// table addresses VMCOREINFO gives: names are token-compressed (token_table / token_index), addresses
/// are offsets from kallsyms_relative_base (CONFIG_KALLSYMS_BASE_RELATIVE, ABSOLUTE_PERCPU). The table is
/// the guest's, so untrusted: no token nor name may be longer than the kernel's own KSYM_NAME_LEN, and
/// every symbol is a step of the introspection's budget (a name may claim 32,767 tokens of 64 KiB each).</summary>
public static class Kallsyms
{
    /// <summary>Symbols a kernel may have: ~130,000 in a distribution's, under a million in allyesconfig; it
    /// sizes the offsets (4 bytes each) and names (up to 64 MiB) read before the decode.</summary>
    public const int MaxSymbols = 1 << 21;

    /// <summary>The kernel's longest symbol name (include/linux/kallsyms.h, 512 since 6.1).</summary>
    public const int KsymNameLen = 512;

    /// <summary>The addresses of <paramref name="wanted"/>, and how many symbols the table holds.</summary>
    public static (IReadOnlyDictionary<string, ulong> Found, int Count) Lookup(AddressSpace space, VmcoreInfo info, IReadOnlySet<string> wanted, Walks.WalkBudget budget)
    {
        var numSyms = Read(space, info.Symbol("kallsyms_num_syms"), 4, "kallsyms_num_syms");
        var count = BinaryPrimitives.ReadInt32LittleEndian(numSyms);
        if (count is <= 0 or > MaxSymbols)
        {
            throw new GuestDataException($"kallsyms_num_syms is {count}: not a plausible symbol count");
        }
        var tokenIndex = Read(space, info.Symbol("kallsyms_token_index"), 512, "kallsyms_token_index");
        var maxToken = 0;
        for (var i = 0; i < 256; i++)
        {
            maxToken = Math.Max(maxToken, BinaryPrimitives.ReadUInt16LittleEndian(tokenIndex.AsSpan(i * 2)));
        }
        var tokenTable = Read(space, info.Symbol("kallsyms_token_table"), maxToken + 256, "kallsyms_token_table");
        var tokens = new string[256];
        for (var i = 0; i < 256; i++)
        {
            var t = tokenTable.AsSpan(BinaryPrimitives.ReadUInt16LittleEndian(tokenIndex.AsSpan(i * 2)));
            var end = t.IndexOf((byte)0);
            if (end is < 0 or > KsymNameLen)
            {
                throw new GuestDataException($"kallsyms token {i} is longer than a symbol name may be ({KsymNameLen} bytes)");
            }
            tokens[i] = Encoding.ASCII.GetString(t[..end]);
        }
        var offsets = Read(space, info.Symbol("kallsyms_offsets"), count * 4, "kallsyms_offsets");
        var relativeBase = BinaryPrimitives.ReadUInt64LittleEndian(
            Read(space, info.Symbol("kallsyms_relative_base"), 8, "kallsyms_relative_base"));

        // The names table ends before the markers table; at most ~32 bytes a symbol in practice.
        var namesVa = info.Symbol("kallsyms_names");
        var names = ReadUpTo(space, namesVa, Math.Min(count * 64L, 64L << 20));
        var found = new Dictionary<string, ulong>(StringComparer.Ordinal);
        var at = 0;
        var name = new StringBuilder(64);
        for (var i = 0; i < count; i++)
        {
            if (!budget.Take())
            {
                throw new GuestDataException($"kallsyms: {budget.Spent}");
            }
            if (at >= names.Length)
            {
                throw new GuestDataException($"kallsyms_names ends at symbol {i} of {count}");
            }
            int length = names[at++];
            if ((length & 0x80) != 0)
            {
                // "Big" symbols (6.1+): two-byte ULEB128 length.
                if (at >= names.Length)
                {
                    throw new GuestDataException("kallsyms_names is truncated");
                }
                length = (length & 0x7f) | (names[at++] << 7);
            }
            if (at + length > names.Length)
            {
                throw new GuestDataException($"kallsyms_names entry {i} runs past the table");
            }
            name.Clear();
            for (var j = 0; j < length; j++)
            {
                name.Append(tokens[names[at + j]]);
                if (name.Length > KsymNameLen)
                {
                    throw new GuestDataException($"kallsyms name {i} is longer than a symbol name may be ({KsymNameLen} bytes)");
                }
            }
            at += length;
            if (name.Length > 1 && wanted.Contains(name.ToString(1, name.Length - 1)))
            {
                var offset = BinaryPrimitives.ReadInt32LittleEndian(offsets.AsSpan(i * 4));
                // Non-negative: an absolute (per-cpu) value; negative: relative_base - 1 - offset.
                var address = offset >= 0 ? (ulong)offset : relativeBase - 1 - (ulong)(long)offset;
                found.TryAdd(name.ToString(1, name.Length - 1), address);
            }
        }
        return (found, count);
    }

    private static byte[] Read(AddressSpace space, ulong va, int length, string what)
    {
        var buffer = new byte[length];
        return space.TryRead(va, buffer)
            ? buffer
            : throw new GuestDataException($"{what} at 0x{va:x} is not in guest memory");
    }

    private static byte[] ReadUpTo(AddressSpace space, ulong va, long max)
    {
        var buffer = new byte[max];
        var got = 0L;
        while (got < max)
        {
            var n = (int)Math.Min((long)(4096 - ((va + (ulong)got) & 0xfff)), max - got);
            if (!space.TryRead(va + (ulong)got, buffer.AsSpan((int)got, n)))
            {
                break;
            }
            got += n;
        }
        return got == 0 ? throw new GuestDataException($"kallsyms_names at 0x{va:x} is not in guest memory") : buffer[..(int)got];
    }
}
