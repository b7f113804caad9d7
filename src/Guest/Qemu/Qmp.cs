using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace SEmigrate.Guest.Qemu;

/// <summary>The QEMU Machine Protocol over a unix socket: one JSON command a line, answered by a
/// "return" or "error" object, with asynchronous events in between (skipped).</summary>
internal sealed class Qmp : IAsyncDisposable
{
    private readonly Socket socket;
    private readonly StreamReader reader;
    private readonly StreamWriter writer;

    private Qmp(Socket socket)
    {
        this.socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        reader = new StreamReader(stream, Encoding.UTF8);
        writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    public static async Task<Qmp> ConnectAsync(string socketPath, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var qmp = new Qmp(socket);
        _ = await qmp.reader.ReadLineAsync(ct); // greeting
        await qmp.ExecuteAsync("qmp_capabilities", null, ct);
        return qmp;
    }

    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments, CancellationToken ct)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null)
        {
            request["arguments"] = arguments;
        }
        // One command at a time: a guest's control may be lent (LiveGuest.Borrowed), and replies carry no id.
        await gate.WaitAsync(ct);
        try
        {
            await writer.WriteLineAsync(request.ToJsonString().AsMemory(), ct);
            while (true)
            {
                var line = await reader.ReadLineAsync(ct)
                    ?? throw new IOException($"QEMU closed the QMP connection during '{command}'");
                var reply = JsonNode.Parse(line) as JsonObject;
                if (reply?["error"] is { } error)
                {
                    throw new InvalidOperationException($"QMP '{command}' failed: {error["desc"]}");
                }
                if (reply?.ContainsKey("return") == true)
                {
                    return reply["return"];
                }
            }
        }
        finally
        {
            gate.Release();
        }
    }

    private readonly SemaphoreSlim gate = new(1, 1);

    public async ValueTask DisposeAsync()
    {
        await writer.DisposeAsync();
        reader.Dispose();
        socket.Dispose();
        gate.Dispose();
    }
}
