using System.Text;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Sealing;

/// <summary>What the operator signs, as bytes: every field of a request, a drain order or an enrolment,
/// length-prefixed in a fixed order behind a tag naming what it is (so one kind of signature is never taken
/// for another). Not JSON: the bytes must not depend on a serializer's choices, since the signed records
/// travel through Temporal and the embedded engine's journal and are checked where they arrive.</summary>
public static class OperatorSignatures
{
    public static MigrationRequest Sign(MigrationRequest request, OperatorKey key)
    {
        var unsigned = request with { Signature = null, Order = null };
        return unsigned with { Signature = key.Sign(Bytes(unsigned)) };
    }

    public static DrainOrder Sign(DrainOrder order, OperatorKey key) => order with { Signature = key.Sign(Bytes(order)) };

    /// <summary>A stop, signed, valid for <paramref name="validFor"/>.</summary>
    public static StopVm Sign(StopVm stop, OperatorKey key, TimeSpan validFor)
    {
        var unsigned = stop with { NotAfter = DateTimeOffset.UtcNow + validFor, Signature = null };
        return unsigned with { Signature = key.Sign(Bytes(unsigned)) };
    }

    public static bool IsSigned(StopVm stop, ReadOnlySpan<byte> operatorKey) =>
        stop.Signature is { } s && OperatorKey.Verify(operatorKey, Bytes(stop), s);

    public static byte[] Bytes(StopVm s) => new Writer("semigrate stop vm v1").Id(s.MigrationId).Id(s.Vm).Text(s.Main).Time(s.NotAfter).ToArray();

    public static bool IsSigned(MigrationRequest request, ReadOnlySpan<byte> operatorKey) =>
        request.Signature is { } s && OperatorKey.Verify(operatorKey, Bytes(request), s);

    public static bool IsSigned(DrainOrder order, ReadOnlySpan<byte> operatorKey) =>
        order.Signature is { } s && OperatorKey.Verify(operatorKey, Bytes(order), s);

    /// <summary>The signed bytes of a request: all of it but its signature and order.</summary>
    public static byte[] Bytes(MigrationRequest r)
    {
        var w = new Writer("semigrate migration request v1");
        w.Id(r.MigrationId).Id(r.Vm).Text(r.Guest).Text(r.Source).Destination(r.Main).Count(r.SubHosts.Count);
        foreach (var d in r.SubHosts)
        {
            w.Destination(d);
        }
        w.Text(r.Mode.ToWireName()).Texts(r.PlainProcesses).Pinned(r.Pinned ?? []).Time(r.NotAfter);
        return w.ToArray();
    }

    /// <summary>The signed bytes of a drain order (v3: with the main hosts the operator named; orders of
    /// before, whose main hosts were the hosts' own reports of their roles, do not verify).</summary>
    public static byte[] Bytes(DrainOrder o) =>
        new Writer("semigrate drain order v3").Text(o.Host).Text(o.Mode.ToWireName()).Texts(o.PlainProcesses).Pinned(o.Hosts).Texts(o.MainHosts ?? []).Time(o.NotAfter).ToArray();

    /// <summary>The signed bytes of an enrolment: the operator vouches that <paramref name="hostKey"/> is <paramref name="host"/>'s.</summary>
    public static byte[] Enrolment(string host, byte[] hostKey, DateTimeOffset at) =>
        new Writer("semigrate host enrolment v1").Text(host).Blob(hostKey).Time(at).ToArray();

    private sealed class Writer
    {
        private readonly MemoryStream bytes = new();
        private readonly BinaryWriter w;

        public Writer(string tag)
        {
            w = new BinaryWriter(bytes, Encoding.UTF8, leaveOpen: true);
            Text(tag);
        }

        public Writer Id(Guid id)
        {
            w.Write(id.ToByteArray());
            return this;
        }

        public Writer Count(int n)
        {
            w.Write(n);
            return this;
        }

        public Writer Blob(byte[] data)
        {
            w.Write(data.Length);
            w.Write(data);
            return this;
        }

        public Writer Text(string text) => Blob(Encoding.UTF8.GetBytes(text));

        public Writer Texts(IReadOnlyList<string> texts)
        {
            Count(texts.Count);
            foreach (var t in texts)
            {
                Text(t);
            }
            return this;
        }

        public Writer Destination(Destination d)
        {
            Text(d.Host);
            w.Write(d.CapacityPages);
            return this;
        }

        public Writer Pinned(IReadOnlyList<PinnedHost> hosts)
        {
            Count(hosts.Count);
            foreach (var h in hosts)
            {
                Text(h.Host).Blob(h.HostKey);
            }
            return this;
        }

        public Writer Time(DateTimeOffset? at)
        {
            w.Write(at?.ToUnixTimeMilliseconds() ?? long.MinValue);
            return this;
        }

        public byte[] ToArray()
        {
            w.Flush();
            return bytes.ToArray();
        }
    }
}
