using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing;

/// <summary>How one migration's pages are put on the wire and taken off it, by mode, so that every
/// mode uses the same protocol and code paths:
/// semigrate: by class (free pages as body-less markers, plain as-is with a GMAC tag, sealed with the data key);
/// allenc: every page sealed with the channel key (the sub-host decrypts and re-encrypts at rest);
/// noenc: every page's bytes as-is (with a GMAC tag: nothing is encrypted, but nothing goes unchecked).
/// Opening checks, before any byte reaches the guest: the page number asked for, the class and version
/// the main host's table expects, and the GCM or GMAC tag over VM, page number, version and epoch.
/// <paramref name="channels"/> (allenc, at the main host): the sealer and opener of a sub-host's own channel
/// key (see DataKey.ChannelKey), null for a host whose pages are under the data key (the main host's own).</summary>
public sealed class PageCodec(MigrationMode mode, Guid vm, PageSealer? sealer, PageOpener? opener,
    Func<string, (PageSealer Sealer, PageOpener Opener)?>? channels = null)
{
    public MigrationMode Mode => mode;

    public Guid Vm => vm;

    /// <summary>The class a page travels as in this mode, given its classification.</summary>
    public PageClass WireClass(PageClass classified) => mode switch
    {
        MigrationMode.Semigrate => classified,
        MigrationMode.AllEnc => PageClass.Sealed,
        _ => PageClass.Plain,
    };

    /// <summary>One page as a record of its own (page-out, tests), for <paramref name="host"/>; the bulk path uses EncodeInto.</summary>
    public PageRecord Encode(ulong pfn, ulong version, PageClass classified, ReadOnlySpan<byte> page, string? host = null)
    {
        var bytes = new byte[PageRecord.HeaderSize + PageRecord.BodySize(WireClass(classified))];
        EncodeInto(bytes, pfn, version, classified, page, host is null ? sealer : channels?.Invoke(host)?.Sealer ?? sealer);
        return PageFrame.ReadRecord(bytes);
    }

    /// <summary>Encodes a page's wire form (record header and body) straight into <paramref name="destination"/>;
    /// returns the bytes written. The bulk path builds whole frames this way, without a copy per page.</summary>
    public int EncodeInto(Span<byte> destination, ulong pfn, ulong version, PageClass classified, ReadOnlySpan<byte> page) =>
        EncodeInto(destination, pfn, version, classified, page, sealer);

    private int EncodeInto(Span<byte> destination, ulong pfn, ulong version, PageClass classified, ReadOnlySpan<byte> page, PageSealer? sealer)
    {
        var wire = WireClass(classified);
        if (wire != PageClass.Zero && sealer is null)
        {
            throw new InvalidOperationException($"{mode} mode needs a sealer for its {wire} pages");
        }
        var size = PageRecord.HeaderSize + PageRecord.BodySize(wire);
        PageFrame.WritePageHeader(destination, wire, pfn, version, wire == PageClass.Zero ? 0 : sealer!.Epoch);
        var body = destination[PageRecord.HeaderSize..size];
        switch (wire)
        {
            case PageClass.Plain:
                sealer!.MacInto(pfn, version, page, body);
                break;
            case PageClass.Sealed:
                sealer!.SealInto(pfn, version, page, body);
                break;
        }
        return size;
    }

    /// <summary>Checks a record fetched for <paramref name="pfn"/> from <paramref name="host"/> against
    /// the table and writes the page into <paramref name="page"/>; throws PageIntegrityException.</summary>
    public void Open(ulong pfn, PageRecord record, PageTable table, string host, Span<byte> page)
    {
        var (expectedClass, expectedVersion) = table[pfn];
        string? problem =
            record.Pfn != pfn ? $"asked for page 0x{pfn:x}, got page 0x{record.Pfn:x}"
            : record.Class != expectedClass ? $"expected a {expectedClass} page, got {record.Class}"
            : record.Version != expectedVersion ? $"expected version {expectedVersion}, got {record.Version} (rollback or replay)"
            : record.Body.Length != PageRecord.BodySize(record.Class) ? $"body of {record.Body.Length} bytes for a {record.Class} page"
            : null;
        if (problem is null)
        {
            switch (record.Class)
            {
                case PageClass.Zero:
                    page.Clear();
                    return;
                default:
                    if ((channels?.Invoke(host)?.Opener ?? opener ?? throw new InvalidOperationException($"{mode} mode needs an opener")).TryOpen(record, page))
                    {
                        return;
                    }
                    problem = record.Class == PageClass.Plain
                        ? "GMAC tag does not verify (altered bytes, another page's or another version's)"
                        : "GCM tag does not verify (altered bytes, another page's or another version's seal)";
                    break;
            }
        }
        page.Clear();
        throw new PageIntegrityException(vm, pfn, host, problem);
    }
}
